// The live view: preview player with a rendition switch, charts from the stream's details every
// second, the publisher's address and codecs (a warning over a 4 s keyframe interval), and the
// room's actions (kick, pause, resume, ban, end), each confirmed first.
import { ApiFailure, get, post } from "./api.js";
import { LineChart } from "./chart.js";
import { confirmAction, h, toast } from "./dom.js";
import { t } from "./i18n.js";
import { Preview, renditionUrl, renditions } from "./player.js";

const GOP_WARNING_SECONDS = 4; // viewers wait up to a keyframe interval before the first picture
const ACTIONS = ["kick", "pause", "resume", "ban", "end"];
const STREAM_ENDING = ["kick", "ban", "end"];
const STREAM_GONE_QUIET_MS = 5000; // the status follows within the publisher's grace, or it came back

// GET /api/v1/rooms/{id}/stream: publisher {address, protocol}, video {codec, width, height, fps,
// keyframe_interval (s)}, audio {codec, sample_rate}, bitrate_in (bit/s), latency_ms, audience.
function describe(stats) {
  const video = stats.video || {};
  const audio = stats.audio || {};
  const size = video.width ? ` ${video.width}×${video.height}` : "";
  const gop = video.keyframe_interval ?? null;
  return [
    [t("live.publisher"), stats.publisher?.address || "—"],
    [t("live.protocol"), stats.publisher?.protocol || "—"],
    [t("live.video"), video.codec ? `${video.codec}${size} ${video.fps ?? ""} fps` : "—"],
    [t("live.audio"), audio.codec ? `${audio.codec}${audio.sample_rate ? ` ${audio.sample_rate} Hz` : ""}` : "—"],
    [t("live.gop"), gop === null ? "—" : `${gop.toFixed(1)} s`, gop !== null && gop > GOP_WARNING_SECONDS],
  ];
}

function numbers(stats) {
  return {
    bitrate: stats.bitrate_in == null ? null : Math.round(stats.bitrate_in / 1000),
    fps: stats.video?.fps ?? null,
    latency: stats.latency_ms ?? null,
    audience: stats.audience?.by_protocol || {},
  };
}

// The player, renditions and stream details are asked for only while the room is live (101): a
// room that is not has no stream, and its 404s would only fill the browser's console.
export async function liveView(room, playUrls) {
  const video = h("video", { controls: true, playsInline: true, muted: true, "aria-label": t("live.preview"), "data-testid": "preview" });
  const preview = new Preview(video);
  const protocol = h("select", { id: "play-protocol" }, h("option", { value: "flv" }, "HTTP-FLV (mpegts.js)"), h("option", { value: "hls" }, "HLS (hls.js)"));
  const rendition = h("select", { id: "play-rendition" });
  const playError = h("p", { class: "form-error", role: "alert" });
  const source = room.appid + "-" + room.roomid;

  async function start() {
    playError.textContent = "";
    const choice = rendition.value || "";
    const url = renditionUrl(playUrls.source[protocol.value], source, choice || null);
    try {
      await preview.play(url, protocol.value);
    } catch (error) {
      playError.textContent = error.message;
    }
  }
  let live = false;
  // /stream is asked while live, except for a while after the stream went before the status said so
  // (a 404, or an action that ends it): a 404 is logged by the browser as an error each time.
  let quietUntil = 0;
  const quiet = () => (quietUntil = Date.now() + STREAM_GONE_QUIET_MS);
  async function onStatus(status) {
    quietUntil = 0;
    if ((status === 101) === live) return;
    live = status === 101;
    offline.hidden = live;
    if (!live) {
      preview.stop();
      details.replaceChildren();
      gopWarning.hidden = true;
      return;
    }
    const levels = await renditions(playUrls.source.hls);
    rendition.replaceChildren(...levels.map((level) => h("option", { value: level.stream || "" }, level.stream ? level.name : t("live.source"))));
    await start();
  }
  protocol.addEventListener("change", start);
  rendition.addEventListener("change", start);

  const canvases = {
    bitrate: h("canvas", { role: "img", "aria-label": t("live.chart.bitrate") }),
    fps: h("canvas", { role: "img", "aria-label": t("live.chart.fps") }),
    audience: h("canvas", { role: "img", "aria-label": t("live.chart.audience") }),
    latency: h("canvas", { role: "img", "aria-label": t("live.chart.latency") }),
  };
  const charts = {
    bitrate: new LineChart(canvases.bitrate, { unit: "kbit/s" }),
    fps: new LineChart(canvases.fps, { unit: "fps" }),
    audience: new LineChart(canvases.audience, { unit: t("live.viewers") }),
    latency: new LineChart(canvases.latency, { unit: "ms" }),
  };
  const details = h("dl", { class: "details", "data-testid": "stream-details" });
  const gopWarning = h("p", { class: "warning", role: "status", hidden: true });
  const offline = h("p", { class: "hint", role: "status" }, t("live.notLive"));

  async function tick() {
    let stats = null;
    if (live && Date.now() >= quietUntil) {
      try {
        stats = await get(`/api/v1/rooms/${room.roomid}/stream`);
      } catch (error) {
        if (!(error instanceof ApiFailure) || error.status !== 404) throw error;
        quiet();
      }
    }
    if (!stats) {
      for (const chart of Object.values(charts)) chart.push({});
      return;
    }
    const rows = describe(stats);
    details.replaceChildren(...rows.flatMap(([term, value, warn]) => [h("dt", {}, term), h("dd", { class: warn ? "warn" : "" }, value)]));
    const gop = rows.at(-1);
    gopWarning.hidden = !gop[2];
    gopWarning.textContent = gop[2] ? t("live.gopWarning", { seconds: gop[1] }) : "";
    const n = numbers(stats);
    charts.bitrate.push({ [t("live.bitrateIn")]: n.bitrate });
    charts.fps.push({ fps: n.fps });
    charts.audience.push(Object.keys(n.audience).length ? n.audience : { total: 0 });
    charts.latency.push({ ms: n.latency });
  }
  let ticking = false;
  const timer = setInterval(() => {
    if (ticking) return;
    ticking = true;
    tick().catch((error) => toast(error.message, "error")).finally(() => (ticking = false));
  }, 1000);

  const actionButtons = ACTIONS.map((action) => h("button", { type: "button", class: action === "resume" ? "" : "danger-outline", "data-action": action, onclick: async () => {
    const ok = await confirmAction(t(`actions.${action}.title`), t(`actions.${action}.confirm`, { name: room.name }), t(`actions.${action}.button`));
    if (!ok) return;
    if (STREAM_ENDING.includes(action)) quiet();
    try {
      await post(`/api/v1/rooms/${room.roomid}/${action}`);
      toast(t(`actions.${action}.done`));
    } catch (error) {
      toast(`${error.message} (${error.code})`, "error");
    }
  } }, t(`actions.${action}.button`)));

  const node = h("section", { class: "live", "aria-labelledby": "live-title" },
    h("h2", { id: "live-title" }, t("live.title")),
    h("div", { class: "live-grid" },
      h("div", { class: "player" }, video,
        h("div", { class: "row" },
          h("label", { for: "play-protocol" }, t("live.protocolPick")), protocol,
          h("label", { for: "play-rendition" }, t("live.rendition")), rendition),
        playError),
      h("div", {}, offline, gopWarning, details, h("div", { class: "actions wrap" }, ...actionButtons))),
    h("div", { class: "charts" }, ...Object.entries(canvases).map(([name, canvas]) => h("figure", {}, h("figcaption", {}, t(`live.chart.${name}`)), canvas))));
  onStatus(room.live_status);
  return {
    node,
    onStatus,
    leave: () => {
      clearInterval(timer);
      preview.stop();
    },
  };
}
