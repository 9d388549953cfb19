// The console's only door to the server: the session (cookie + CSRF token) and JSON calls.
// Writes carry X-CSRF-Token; an admin names the app it works on with X-Minilive-App.

export const session = {
  role: null, // "admin" | "app"
  appid: null, // the signed-in app (role app)
  app: null, // the app being worked on (the admin picks it)
  csrf: "",
  timeZone: "Asia/Shanghai", // the server's [rooms] time_zone; the official default until the server says
  zoneKnown: false,
};

export class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let signedOut = () => {};
export function onSignedOut(callback) {
  signedOut = callback;
}

export function adopt(me) {
  session.role = me.role;
  session.appid = me.appid;
  session.csrf = me.csrf;
  session.app = me.role === "app" ? me.appid : sessionStorage.getItem("minilive.app");
}

export function pickApp(appid) {
  session.app = appid;
  sessionStorage.setItem("minilive.app", appid);
}

export async function call(method, path, body, { form = null, quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (session.role === "admin" && session.app) headers["X-Minilive-App"] = session.app;
  if (method !== "GET" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  let payload;
  if (form) {
    payload = form;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    if (response.status === 401 && !quiet401) signedOut();
    throw new ApiFailure(response.status, error.code ?? response.status, error.message || text || response.statusText);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body, options) => call("POST", path, body, options);
export const patch = (path, body) => call("PATCH", path, body);
export const del = (path) => call("DELETE", path);

// A WebSocket URL on this server (ws: or wss: as the page came).
export function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
