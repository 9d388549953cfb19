// The preview player: mpegts.js for HTTP-FLV, hls.js for HLS (or Safari's own), one <video>.
// Play URLs are taken as paths on this server: the page's CSP allows only its own origin.

export function sameOrigin(url) {
  const parsed = new URL(url, location.href);
  return `${location.origin}${parsed.pathname}${parsed.search}`;
}

export class Preview {
  constructor(video) {
    this.video = video;
    this.engine = null;
  }

  async play(url, kind) {
    this.stop();
    const source = sameOrigin(url);
    if (kind === "flv") {
      const mpegts = window.mpegts;
      if (!mpegts || !mpegts.isSupported()) throw new Error("mpegts.js cannot play here (no Media Source Extensions)");
      mpegts.LoggingControl.enableAll = false;
      const player = mpegts.createPlayer({ type: "flv", isLive: true, url: source }, { enableStashBuffer: false, liveBufferLatencyChasing: true });
      player.attachMediaElement(this.video);
      player.load();
      this.engine = { destroy: () => player.destroy(), stats: () => player.statisticsInfo };
    } else {
      const { default: Hls } = await import("../vendor/hls.min.mjs");
      if (Hls.isSupported()) {
        const hls = new Hls({ lowLatencyMode: true, debug: false });
        hls.loadSource(source);
        hls.attachMedia(this.video);
        this.engine = { destroy: () => hls.destroy(), stats: () => ({ level: hls.currentLevel, latency: hls.latency }) };
      } else {
        this.video.src = source;
        this.engine = { destroy: () => this.video.removeAttribute("src"), stats: () => ({}) };
      }
    }
    this.video.muted = true; // autoplay is allowed muted; the operator unmutes with the controls
    await this.video.play().catch(() => null);
  }

  stop() {
    if (this.engine) this.engine.destroy();
    this.engine = null;
    this.video.removeAttribute("src");
    this.video.load();
  }
}

// The stream's renditions from its HLS master playlist: the source first, then each rendition's
// stream name ("../STREAM_NAME/index.m3u8"). Just the source where there are none.
export async function renditions(hlsUrl) {
  const master = hlsUrl.replace(/index\.m3u8(\?.*)?$/, "master.m3u8$1");
  const found = [{ name: "source", stream: null }];
  const response = await fetch(sameOrigin(master)).catch(() => null);
  if (!response || !response.ok) return found;
  const lines = (await response.text()).split("\n").map((line) => line.trim());
  lines.forEach((line, index) => {
    const match = line.match(/^\.\.\/([^/]+)\/index\.m3u8/);
    if (!match) return;
    const info = lines[index - 1] || "";
    const height = info.match(/RESOLUTION=\d+x(\d+)/);
    found.push({ name: height ? `${height[1]}p` : match[1], stream: match[1] });
  });
  return found;
}

// A play URL of another stream of the same app (a rendition): the name swapped in the path.
export function renditionUrl(url, source, stream) {
  return stream ? url.replace(`/${source}`, `/${stream}`) : url;
}
