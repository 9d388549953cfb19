// A room's replays: the list, playback in the page (hls.js), the MP4 download, expiry and delete.
import { del, get, session } from "./api.js";
import { confirmAction, h, toast } from "./dom.js";
import { t } from "./i18n.js";
import { Preview } from "./player.js";
import { shown } from "./time.js";

function duration(seconds) {
  const s = Math.round(seconds || 0);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

export async function replaysPanel(roomid) {
  const { replays } = await get(`/api/v1/rooms/${roomid}/replays`);
  const video = h("video", { controls: true, playsInline: true, hidden: true, "aria-label": t("replays.player"), "data-testid": "replay-video" });
  const preview = new Preview(video);
  const zone = session.timeZone;
  const rows = replays.map((replay) => {
    const ready = replay.status === "ready" && replay.urls.hls;
    const tr = h("tr", { dataset: { replay: replay.replay_id } },
      h("td", { "data-label": t("replays.created") }, shown(replay.created_at, zone)),
      h("td", { "data-label": t("replays.duration") }, duration(replay.duration)),
      h("td", { "data-label": t("replays.status") }, t(`replays.state.${replay.status}`)),
      h("td", { "data-label": t("replays.expires") }, shown(replay.expire_at, zone)),
      h("td", { class: "actions wrap" },
        ready ? h("button", { type: "button", onclick: async () => {
          video.hidden = false;
          await preview.play(replay.urls.master || replay.urls.hls, "hls");
        } }, t("replays.play")) : null,
        replay.urls.mp4 ? h("a", { class: "button", href: new URL(replay.urls.mp4).pathname, download: `replay-${roomid}-${replay.session}.mp4` }, t("replays.download")) : null,
        h("button", { type: "button", class: "danger-outline", onclick: async () => {
          if (!(await confirmAction(t("replays.deleteTitle"), t("replays.deleteConfirm", { time: shown(replay.created_at, zone) }), t("replays.delete")))) return;
          try {
            await del(`/api/v1/replays/${encodeURIComponent(replay.replay_id)}`);
            tr.remove();
            toast(t("replays.deleted"));
          } catch (error) {
            toast(`${error.message} (${error.code})`, "error");
          }
        } }, t("replays.delete"))));
    return tr;
  });
  return {
    node: h("section", { class: "replays", "aria-labelledby": "replays-title" },
      h("h2", { id: "replays-title" }, t("replays.title")),
      rows.length ? h("table", {}, h("thead", {}, h("tr", {}, ...["created", "duration", "status", "expires"].map((c) => h("th", { scope: "col" }, t(`replays.${c}`))), h("th", {}, h("span", { class: "visually-hidden" }, t("replays.actions"))))), h("tbody", {}, ...rows))
        : h("p", {}, t("replays.none")),
      video),
    leave: () => preview.stop(),
  };
}
