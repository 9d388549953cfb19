// What the playback tests read from a page: window.player.snapshot() after watch(video).
"use strict";

window.player = {
  errors: [],
  events: [],
  callbackFrames: 0,
  video: null,

  watch(video) {
    this.video = video;
    for (const name of ["loadedmetadata", "playing", "waiting", "stalled", "ended"]) {
      video.addEventListener(name, () => this.events.push([name, video.currentTime]));
    }
    video.addEventListener("error", () => {
      const error = video.error;
      this.errors.push(`video: ${error ? `${error.code} ${error.message}` : "error"}`);
    });
    // Counts frames the compositor actually presented, independent of the decoder's counters.
    if (video.requestVideoFrameCallback) {
      const count = () => {
        this.callbackFrames += 1;
        video.requestVideoFrameCallback(count);
      };
      video.requestVideoFrameCallback(count);
    }
  },

  fail(where, detail) {
    this.errors.push(`${where}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  },

  snapshot() {
    const video = this.video;
    const quality = video && video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    const buffered = video && video.buffered.length ? video.buffered.end(video.buffered.length - 1) : 0;
    return {
      currentTime: video ? video.currentTime : 0,
      bufferedEnd: buffered,
      paused: video ? video.paused : true,
      readyState: video ? video.readyState : 0,
      videoWidth: video ? video.videoWidth : 0,
      videoHeight: video ? video.videoHeight : 0,
      totalVideoFrames: quality ? quality.totalVideoFrames : 0,
      droppedVideoFrames: quality ? quality.droppedVideoFrames : 0,
      callbackFrames: this.callbackFrames,
      errors: this.errors,
      events: this.events,
      ...(this.extra ? this.extra() : {}),
    };
  },
};

window.addEventListener("error", (event) => window.player.fail("page", `${event.message} at ${event.filename}:${event.lineno}`));
window.addEventListener("unhandledrejection", (event) => window.player.fail("promise", String(event.reason)));
