// The rooms list: status badges kept live by each visible room's channel, search and a status filter.
import { get, session } from "./api.js";
import { badge, h, setBadge } from "./dom.js";
import { t } from "./i18n.js";
import { watchStatus } from "./status_socket.js";
import { shown } from "./time.js";

const PAGE = 100;
const STATUSES = [101, 102, 103, 104, 105, 106, 107];

export async function roomsView() {
  const rooms = [];
  let total = 0;
  const watchers = new Map(); // roomid -> stop()
  const rows = new Map(); // roomid -> {row, badge, room}

  const search = h("input", { type: "search", id: "room-search", placeholder: t("rooms.searchHint") });
  const filter = h("select", { id: "room-filter" }, h("option", { value: "" }, t("rooms.allStatuses")),
    ...STATUSES.map((s) => h("option", { value: String(s) }, `${t(`status.${s}`)} (${s})`)));
  const body = h("tbody");
  const more = h("button", { type: "button", hidden: true, onclick: () => fetchPage() }, t("rooms.more"));
  const count = h("p", { class: "hint", "aria-live": "polite" });

  function row(room) {
    const status = badge(room.live_status);
    const tr = h("tr", { dataset: { roomid: String(room.roomid) } },
      h("td", { "data-label": "ID" }, String(room.roomid)),
      h("td", { "data-label": t("room.name") }, h("a", { href: `#/rooms/${room.roomid}` }, room.name)),
      h("td", { "data-label": t("rooms.status") }, status),
      h("td", { "data-label": t("room.anchorName") }, room.anchor_name),
      h("td", { "data-label": t("room.startTime") }, shown(room.start_time, session.timeZone)),
      h("td", { "data-label": t("rooms.viewers"), class: "viewers" }, String(room.viewers)));
    rows.set(room.roomid, { row: tr, badge: status, room });
    return tr;
  }

  function matches(room) {
    const text = search.value.trim().toLowerCase();
    const wanted = filter.value;
    if (wanted && String(room.live_status) !== wanted) return false;
    if (!text) return true;
    return [String(room.roomid), room.name, room.anchor_name, room.anchor_wechat].some((v) => (v || "").toLowerCase().includes(text));
  }

  // Only rooms on screen hold a socket: the filter closes the others' and opens the shown ones'.
  function render() {
    const visible = rooms.filter(matches);
    body.replaceChildren(...visible.map((room) => rows.get(room.roomid)?.row || row(room)));
    const ids = new Set(visible.map((room) => room.roomid));
    for (const [id, stop] of watchers) if (!ids.has(id)) (stop(), watchers.delete(id));
    for (const room of visible) {
      if (watchers.has(room.roomid)) continue;
      watchers.set(room.roomid, watchStatus(room.roomid, (message) => {
        const entry = rows.get(room.roomid);
        if (message.type === "status") {
          entry.room.live_status = message.live_status;
          setBadge(entry.badge, message.live_status);
        }
        if ("viewers" in message) entry.row.querySelector(".viewers").textContent = String(message.viewers);
      }));
    }
    count.textContent = t("rooms.count", { shown: visible.length, total });
    more.hidden = rooms.length >= total;
  }

  async function fetchPage() {
    const page = await get(`/api/v1/rooms?start=${rooms.length}&limit=${PAGE}`);
    rooms.push(...page.rooms);
    total = page.total;
    render();
  }

  search.addEventListener("input", render);
  filter.addEventListener("change", render);
  await fetchPage();
  const node = h("section", { class: "card" },
    h("div", { class: "heading" }, h("h1", {}, t("rooms.title")), h("a", { class: "button primary", href: "#/rooms/new" }, t("rooms.new"))),
    h("div", { class: "filters" },
      h("label", { for: "room-search" }, t("rooms.search")), search,
      h("label", { for: "room-filter" }, t("rooms.filter")), filter),
    count,
    total ? h("table", { class: "rooms" },
      h("thead", {}, h("tr", {}, ...["ID", t("room.name"), t("rooms.status"), t("room.anchorName"), t("room.startTime"), t("rooms.viewers")].map((c) => h("th", { scope: "col" }, c)))),
      body) : h("p", {}, t("rooms.none")),
    more);
  return {
    node,
    focus: search,
    leave: () => {
      for (const stop of watchers.values()) stop();
    },
  };
}
