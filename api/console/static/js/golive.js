// Going live: the signed push URL, its QR code for live-pusher pages, the OBS server + stream key
// split, and the exact ffmpeg command that pushes a test picture.
import qrcode from "../vendor/qrcode.mjs";
import { get, session } from "./api.js";
import { copyable, h } from "./dom.js";
import { t } from "./i18n.js";
import { shown } from "./time.js";

// OBS asks for a server and a stream key: the key is what follows the app ("live/") in the URL.
export function obsSplit(pushUrl) {
  const url = new URL(pushUrl.replace(/^rtmps?:/, "http:"));
  const [, app, ...rest] = url.pathname.split("/");
  const scheme = pushUrl.slice(0, pushUrl.indexOf(":"));
  return { server: `${scheme}://${url.host}/${app}`, key: `${rest.join("/")}${url.search}` };
}

export function ffmpegCommand(pushUrl) {
  return [
    "ffmpeg -re",
    "-f lavfi -i testsrc2=size=1280x720:rate=30",
    "-f lavfi -i sine=frequency=440:sample_rate=44100",
    "-c:v libx264 -preset veryfast -tune zerolatency -g 60 -pix_fmt yuv420p -b:v 2500k",
    "-c:a aac -b:a 128k",
    `-f flv '${pushUrl}'`,
  ].join(" ");
}

function qrImage(text) {
  const code = qrcode(0, "M");
  code.addData(text);
  code.make();
  return h("img", { class: "qr", src: code.createDataURL(6, 4), alt: t("golive.qrAlt"), "data-testid": "push-qr" });
}

export async function goLivePanel(roomid) {
  const { push_url: pushUrl, expires_at: expiresAt } = await get(`/api/v1/rooms/${roomid}/push_url`);
  const obs = obsSplit(pushUrl);
  return h("section", { class: "golive", "aria-labelledby": "golive-title" },
    h("h2", { id: "golive-title" }, t("golive.title")),
    h("div", { class: "golive-grid" },
      h("div", {},
        copyable(t("golive.pushUrl"), pushUrl, { testid: "push-url" }),
        h("p", { class: "hint" }, t("golive.expires", { time: shown(expiresAt, session.timeZone), zone: session.timeZone })),
        h("h3", {}, t("golive.obs")),
        copyable(t("golive.obsServer"), obs.server, { testid: "obs-server" }),
        copyable(t("golive.obsKey"), obs.key, { secret: true, testid: "obs-key" }),
        h("p", { class: "hint" }, t("golive.obsHint")),
        h("h3", {}, t("golive.test")),
        copyable(t("golive.ffmpeg"), ffmpegCommand(pushUrl), { testid: "ffmpeg-command" })),
      h("figure", { class: "qr-box" }, qrImage(pushUrl), h("figcaption", {}, t("golive.qrCaption")))));
}
