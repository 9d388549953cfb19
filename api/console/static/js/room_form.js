// Create or edit a room. The server checks every field as the official API does; its errcode and
// message land next to the field they are about. Images upload by drag and drop (or the file picker).
import { ApiFailure, get, patch, post, session } from "./api.js";
import { field, h, toast } from "./dom.js";
import { t } from "./i18n.js";
import { fromWall, toWall } from "./time.js";

// errcode -> the field it is about (errors.py's room codes).
const CODE_FIELDS = {
  300002: "name", 300031: "cover_img", 300032: "share_img", 300037: "feeds_img", 300034: "anchor_name",
  300030: "anchor_wechat", 300039: "sub_anchor_wechat", 500004: "sub_anchor_wechat", 500005: "sub_anchor_wechat",
};
// The official camelCase names that messages quote -> our fields (the 200002 "invalid args" family).
const WIRE_FIELDS = {
  name: "name", coverImg: "cover_img", shareImg: "share_img", feedsImg: "feeds_img", startTime: "start_time",
  endTime: "end_time", anchorName: "anchor_name", anchorWechat: "anchor_wechat", subAnchorWechat: "sub_anchor_wechat",
  type: "type",
};
const SWITCHES = ["is_feeds_public", "close_like", "close_goods", "close_comment", "close_replay", "close_share", "close_kf"];
// A new room's switches: the REST defaults, except that replays are on (the console shows them).
const NEW_SWITCHES = { is_feeds_public: 1, close_kf: 1 };
const IMAGES = [["cover_img", "1080×1920"], ["share_img", "800×640"], ["feeds_img", "800×800"]];

export function fieldOf(error) {
  if (CODE_FIELDS[error.code]) return CODE_FIELDS[error.code];
  const named = Object.keys(WIRE_FIELDS).find((wire) => new RegExp(`\\b${wire}\\b`).test(error.message) && wire !== "name");
  if (named) return WIRE_FIELDS[named];
  return /\bname\b/.test(error.message) ? "name" : null;
}

function imageDrop(name, size, current) {
  const state = { mediaId: current?.[name] || "" };
  const preview = h("img", { alt: "", class: "preview", src: current?.[`${name}_url`] || null, hidden: !current });
  const input = h("input", { type: "file", accept: "image/png,image/jpeg,image/gif,image/webp", name, "data-testid": `${name}-file` });
  const status = h("span", { class: "hint", "aria-live": "polite" }, state.mediaId ? t("form.imageSet") : t("form.dropHere"));
  const wrapper = field(t(`room.${name}`), input, t("form.imageHint", { size }));
  const zone = h("div", { class: "drop", dataset: { field: name } }, preview, status);
  wrapper.insertBefore(zone, input);

  async function upload(file) {
    wrapper.showError("");
    status.textContent = t("form.uploading");
    const form = new FormData();
    form.append("media", file, file.name);
    try {
      const media = await post("/api/v1/media", undefined, { form });
      state.mediaId = media.media_id;
      preview.src = media.url;
      preview.hidden = false;
      status.textContent = t("form.uploaded", { name: file.name });
      zone.dataset.mediaId = media.media_id;
    } catch (error) {
      status.textContent = "";
      wrapper.showError(`${error.message} (${error.code})`);
    }
  }
  input.addEventListener("change", () => input.files[0] && upload(input.files[0]));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) upload(file);
  });
  return { wrapper, value: () => state.mediaId };
}

export async function roomFormView(roomid) {
  const room = roomid ? await get(`/api/v1/rooms/${roomid}`) : null;
  const zone = session.timeZone;
  const soon = Math.ceil((Date.now() / 1000 + 15 * 60) / 300) * 300; // the official minimum is 10 minutes ahead
  const inputs = {
    name: h("input", { name: "name", required: true, value: room?.name || "" }),
    anchor_name: h("input", { name: "anchor_name", required: true, value: room?.anchor_name || "" }),
    anchor_wechat: h("input", { name: "anchor_wechat", required: true, value: room?.anchor_wechat || "" }),
    sub_anchor_wechat: h("input", { name: "sub_anchor_wechat", value: room?.sub_anchor_wechat || "" }),
    start_time: h("input", { name: "start_time", type: "datetime-local", required: true, value: toWall(room?.start_time || soon, zone) }),
    end_time: h("input", { name: "end_time", type: "datetime-local", required: true, value: toWall(room?.end_time || soon + 3600, zone) }),
    type: h("select", { name: "type", disabled: Boolean(room) },
      h("option", { value: "0", selected: room?.type === 0 }, t("room.type.0")),
      h("option", { value: "1", selected: !room || room.type === 1 }, t("room.type.1"))),
  };
  const fields = {};
  for (const [name, input] of Object.entries(inputs)) {
    const hint = name === "start_time" || name === "end_time" ? t("form.zoneHint", { zone }) : t(`form.hint.${name}`);
    fields[name] = field(t(`room.${name}`), input, hint.startsWith("form.") ? "" : hint);
  }
  const images = {};
  for (const [name, size] of IMAGES) {
    images[name] = imageDrop(name, size, room);
    fields[name] = images[name].wrapper;
  }
  const switches = Object.fromEntries(SWITCHES.map((name) => [name, h("input", { type: "checkbox", name, checked: room ? room[name] === 1 : Boolean(NEW_SWITCHES[name]) })]));
  const switchList = h("fieldset", { class: "switches" }, h("legend", {}, t("form.switches")),
    ...SWITCHES.map((name) => h("label", {}, switches[name], " ", t(`room.${name}`))));
  const formError = h("p", { class: "form-error", role: "alert" });

  function body() {
    const data = {};
    for (const name of ["name", "anchor_name", "anchor_wechat"]) data[name] = inputs[name].value.trim();
    if (!room && inputs.sub_anchor_wechat.value.trim()) data.sub_anchor_wechat = inputs.sub_anchor_wechat.value.trim();
    for (const [name] of IMAGES) data[name] = images[name].value();
    for (const name of ["start_time", "end_time"]) {
      // An untouched time keeps its exact second (the input shows minutes only).
      const untouched = room && inputs[name].value === toWall(room[name], zone);
      data[name] = untouched ? room[name] : inputs[name].value ? fromWall(inputs[name].value, zone) : 0;
    }
    if (!room) data.type = Number(inputs.type.value);
    for (const name of SWITCHES) data[name] = switches[name].checked ? 1 : 0;
    return data;
  }

  const form = h("form", { class: "card", novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    formError.textContent = "";
    for (const wrapper of Object.values(fields)) wrapper.showError("");
    try {
      const saved = room ? await patch(`/api/v1/rooms/${roomid}`, body()) : await post("/api/v1/rooms", body());
      toast(t(room ? "form.saved" : "form.created", { id: saved.roomid }));
      location.hash = `#/rooms/${saved.roomid}`;
    } catch (error) {
      if (!(error instanceof ApiFailure)) throw error;
      const name = fieldOf(error);
      const text = `${error.message} (${error.code})`;
      if (name && fields[name]) {
        fields[name].showError(text);
        if (name === "start_time") fields.end_time.showError(text);
        (fields[name].querySelector("input,select") || form).focus();
      } else {
        formError.textContent = text;
      }
    }
  } },
  h("h1", {}, room ? t("form.editTitle", { id: roomid }) : t("form.newTitle")),
  fields.name, fields.cover_img, fields.share_img, fields.feeds_img,
  h("div", { class: "row" }, fields.start_time, fields.end_time),
  h("div", { class: "row" }, fields.anchor_name, fields.anchor_wechat),
  room ? null : fields.sub_anchor_wechat,
  fields.type, switchList, formError,
  h("div", { class: "actions" },
    h("a", { class: "button", href: room ? `#/rooms/${roomid}` : "#/rooms" }, t("common.cancel")),
    h("button", { type: "submit", class: "primary" }, room ? t("form.save") : t("form.create"))));
  return { node: form, focus: inputs.name };
}
