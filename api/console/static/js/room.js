// One room: its badge (live from the channel), tabs for going live, the live view with the room
// channel, and its replays.
import { get } from "./api.js";
import { badge, h, setBadge } from "./dom.js";
import { t } from "./i18n.js";
import { channelPanel } from "./channel.js";
import { goLivePanel } from "./golive.js";
import { liveView } from "./live.js";
import { replaysPanel } from "./replays.js";
import { watchStatus } from "./status_socket.js";

const TABS = ["golive", "live", "replays"];

export async function roomView(roomid, tab) {
  const room = await get(`/api/v1/rooms/${roomid}`);
  const status = badge(room.live_status);
  const listeners = [(live) => setBadge(status, live)];
  const stops = [watchStatus(roomid, (message) => message.type === "status" && listeners.forEach((listen) => listen(message.live_status)))];
  let body;
  if (tab === "live") {
    const live = await liveView(room, await get(`/api/v1/rooms/${roomid}/play_urls`));
    listeners.push(live.onStatus);
    const channel = await channelPanel(room);
    stops.push(live.leave, channel.leave);
    body = h("div", { class: "live-page" }, live.node, channel.node);
  } else if (tab === "replays") {
    const replays = await replaysPanel(roomid);
    stops.push(replays.leave);
    body = replays.node;
  } else {
    body = await goLivePanel(roomid);
  }
  const tabs = h("nav", { class: "tabs", "aria-label": t("room.sections") },
    ...TABS.map((name) => h("a", { href: `#/rooms/${roomid}/${name}`, "aria-current": name === (TABS.includes(tab) ? tab : "golive") ? "page" : null }, t(`room.tab.${name}`))));
  const heading = h("h1", { tabindex: "-1" }, room.name);
  return {
    node: h("section", { class: "card" },
      h("p", {}, h("a", { href: "#/rooms" }, `← ${t("rooms.title")}`)),
      h("div", { class: "heading" }, heading, status, h("a", { class: "button", href: `#/rooms/${roomid}/edit` }, t("room.edit"))),
      tabs, body),
    focus: heading,
    leave: () => stops.forEach((stop) => stop()),
  };
}
