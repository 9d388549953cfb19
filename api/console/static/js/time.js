// Times in the app's time zone (the server's [rooms] time_zone), whatever the browser's zone is.

function offsetMs(zone, epochMs) {
  const format = new Intl.DateTimeFormat("en-US", {
    timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  const v = Object.fromEntries(format.formatToParts(new Date(epochMs)).map((p) => [p.type, p.value]));
  const wall = Date.UTC(+v.year, +v.month - 1, +v.day, +v.hour, +v.minute, +v.second);
  return wall - Math.floor(epochMs / 1000) * 1000;
}

// "2026-12-03T20:30" (an <input type=datetime-local> value) on the zone's wall clock -> Unix seconds.
export function fromWall(value, zone) {
  const [date, clock] = value.split("T");
  const [y, m, d] = date.split("-").map(Number);
  const [hh, mm] = clock.split(":").map(Number);
  const wall = Date.UTC(y, m - 1, d, hh, mm);
  let epoch = wall - offsetMs(zone, wall);
  epoch = wall - offsetMs(zone, epoch); // the offset at the instant itself (daylight saving edges)
  return Math.round(epoch / 1000);
}

// Unix seconds -> the zone's wall clock as "YYYY-MM-DDTHH:MM".
export function toWall(seconds, zone) {
  const ms = seconds * 1000;
  return new Date(ms + offsetMs(zone, ms)).toISOString().slice(0, 16);
}

export function shown(seconds, zone) {
  return seconds ? toWall(seconds, zone).replace("T", " ") : "—";
}
