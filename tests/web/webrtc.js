// WHIP/WHEP without a library: offer with every candidate gathered (minilive does not take trickle
// ICE), POST it, apply the answer. Pages read their state from window.rtc.
"use strict";

window.rtc = {
  pc: null,
  state: "new",
  location: null,
  errors: [],

  async negotiate(pc, url) {
    this.pc = pc;
    pc.addEventListener("connectionstatechange", () => { this.state = pc.connectionState; });
    await pc.setLocalDescription(await pc.createOffer());
    if (pc.iceGatheringState !== "complete") {
      await new Promise((resolve) => pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") resolve();
      }));
    }
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/sdp" },
      body: pc.localDescription.sdp,
    });
    const body = await response.text();
    if (response.status !== 201) throw new Error(`POST ${url}: ${response.status} ${body}`);
    this.location = new URL(response.headers.get("Location"), url).href;
    await pc.setRemoteDescription({ type: "answer", sdp: body });
  },

  // The RTP stats, keyed "outbound-rtp video", "inbound-rtp audio", ..., with their codec's mimeType.
  async stats() {
    const report = await this.pc.getStats();
    const out = {};
    report.forEach((entry) => {
      if (entry.type === "inbound-rtp" || entry.type === "outbound-rtp") {
        const codec = entry.codecId ? report.get(entry.codecId) : null;
        out[`${entry.type} ${entry.kind}`] = { ...entry, mimeType: codec ? codec.mimeType : null };
      }
    });
    return out;
  },

  // Ends the session as WHIP and WHEP say: DELETE its resource; the status code, or an error.
  async stop() {
    const response = await fetch(this.location, { method: "DELETE" });
    this.pc.close();
    return response.status;
  },

  start(work) {
    work().catch((error) => this.errors.push(String(error)));
  },
};
