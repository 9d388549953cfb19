// A small line chart on a canvas: the last N seconds of one or more series, redrawn each second.
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];

export class LineChart {
  constructor(canvas, { seconds = 60, unit = "" } = {}) {
    this.canvas = canvas;
    this.seconds = seconds;
    this.unit = unit;
    this.series = new Map(); // name -> [values], newest last
  }

  push(values) {
    for (const [name, value] of Object.entries(values)) {
      if (!this.series.has(name)) this.series.set(name, []);
    }
    for (const [name, points] of this.series) {
      points.push(values[name] ?? null);
      if (points.length > this.seconds) points.shift();
    }
    this.draw();
  }

  draw() {
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth || 300;
    const height = this.canvas.clientHeight || 120;
    this.canvas.width = width * ratio;
    this.canvas.height = height * ratio;
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const all = [...this.series.values()].flat().filter((v) => v !== null);
    const max = Math.max(1, ...all) * 1.1;
    const style = getComputedStyle(this.canvas);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = style.color;
    ctx.strokeStyle = "rgba(127,127,127,0.3)";
    ctx.beginPath();
    ctx.moveTo(0, height - 0.5);
    ctx.lineTo(width, height - 0.5);
    ctx.stroke();
    ctx.fillText(`${Math.round(max)} ${this.unit}`, 4, 12);
    let legendX = 4;
    [...this.series.entries()].forEach(([name, points], index) => {
      const color = COLORS[index % COLORS.length];
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      let started = false;
      points.forEach((value, i) => {
        if (value === null) {
          started = false;
          return;
        }
        const x = width - ((points.length - 1 - i) / (this.seconds - 1)) * width;
        const y = height - (value / max) * (height - 16);
        if (started) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
        started = true;
      });
      ctx.stroke();
      if (this.series.size > 1) {
        ctx.fillStyle = color;
        const label = `${name} ${points.at(-1) ?? "—"}`;
        ctx.fillText(label, legendX, height - 4);
        legendX += ctx.measureText(label).width + 12;
      }
    });
  }
}
