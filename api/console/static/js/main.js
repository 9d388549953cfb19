// The console's shell: sign-in, the admin's app picker, the header, and the hash router.
import { adopt, call, get, onSignedOut, pickApp, post, session } from "./api.js";
import { field, h, toast } from "./dom.js";
import { LANGS, lang, load, switchTo, t } from "./i18n.js";
import { roomsView } from "./rooms.js";
import { roomFormView } from "./room_form.js";
import { roomView } from "./room.js";
import { settingsView } from "./settings.js";

const view = document.getElementById("view");
let leave = () => {}; // what the current view closes when another replaces it (sockets, players, timers)

function renderHeader() {
  const signedIn = Boolean(session.role);
  const nav = document.getElementById("nav");
  nav.replaceChildren(
    ...(signedIn && session.app
      ? [h("a", { href: "#/rooms" }, t("nav.rooms")), h("a", { href: "#/settings" }, t("nav.settings"))]
      : []),
    ...(signedIn && session.role === "admin" ? [h("a", { href: "#/apps" }, t("nav.apps"))] : []),
  );
  const who = document.getElementById("who");
  who.textContent = signedIn ? (session.role === "admin" ? t("who.admin", { app: session.app || "—" }) : session.appid) : "";
  const logout = document.getElementById("logout");
  logout.hidden = !signedIn;
  logout.textContent = t("nav.signOut");
  const switcher = document.getElementById("lang");
  switcher.replaceChildren(...LANGS.map((code) => h("option", { value: code, selected: code === lang }, t(`lang.${code}`))));
}

function loginView() {
  const appid = h("input", { name: "appid", autocomplete: "username", required: true });
  const secret = h("input", { name: "secret", type: "password", autocomplete: "current-password", required: true });
  const token = h("input", { name: "admin_token", type: "password", autocomplete: "off", required: true });
  const mode = { value: "app" };
  const appFields = h("div", {}, field(t("login.appid"), appid), field(t("login.secret"), secret));
  const adminFields = h("div", { hidden: true }, field(t("login.adminToken"), token, t("login.adminTokenHint")));
  const message = h("p", { class: "form-error", role: "alert" });
  const tabs = ["app", "admin"].map((kind) =>
    h("button", { type: "button", role: "tab", "aria-selected": String(kind === "app"), onclick: () => {
      mode.value = kind;
      for (const tab of tabs) tab.setAttribute("aria-selected", String(tab === tabs[kind === "app" ? 0 : 1]));
      appFields.hidden = kind !== "app";
      adminFields.hidden = kind !== "admin";
      for (const input of [appid, secret]) input.disabled = kind !== "app";
      token.disabled = kind !== "admin";
      (kind === "app" ? appid : token).focus();
    } }, t(`login.as.${kind}`)));
  token.disabled = true;
  const form = h("form", { class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    message.textContent = "";
    const body = mode.value === "app" ? { appid: appid.value.trim(), secret: secret.value.trim() } : { admin_token: token.value.trim() };
    try {
      const me = await post("/console/api/login", body, { quiet401: true });
      adopt(me);
      await learnZone();
      await afterSignIn();
    } catch (error) {
      message.textContent = error.status === 401 ? t("login.wrong") : `${t("login.failed")}: ${error.message}`;
    }
  } },
  h("h1", {}, t("login.title")),
  h("div", { role: "tablist", class: "tabs" }, ...tabs),
  appFields, adminFields, message,
  h("button", { type: "submit", class: "primary" }, t("login.submit")));
  return { node: form, focus: appid };
}

// Room times are shown on the app's clock, the server's [rooms] time_zone, which the app's usage names.
async function learnZone() {
  if (!session.app || session.zoneKnown) return;
  const usage = await get("/api/v1/app/usage").catch(() => ({}));
  if (usage.time_zone) session.timeZone = usage.time_zone;
  session.zoneKnown = true;
}

async function afterSignIn() {
  const target = !session.app ? "#/apps" : ["", "#/login", "#/apps"].includes(location.hash) ? "#/rooms" : location.hash;
  if (target !== location.hash) location.hash = target; // hashchange routes
  else await route();
}

async function appsView() {
  const { apps } = await get("/console/api/apps");
  const list = h("ul", { class: "apps" }, ...apps.map((app) =>
    h("li", {}, h("button", { type: "button", class: "app-pick", onclick: () => {
      pickApp(app.appid);
      session.zoneKnown = false;
      learnZone().then(() => (location.hash = "#/rooms"));
    } }, h("strong", {}, app.name), " ", h("span", { class: "mono" }, app.appid)))));
  const name = h("input", { name: "name", required: true, maxLength: 64 });
  const created = h("div", { "aria-live": "polite" });
  const addForm = h("form", { class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const app = await post("/console/api/apps", { name: name.value.trim() });
      created.replaceChildren(h("p", { class: "notice" }, t("apps.created", { appid: app.appid }), " ",
        h("code", { class: "mono" }, app.secret), " ", t("apps.secretOnce")));
      list.append(h("li", {}, h("button", { type: "button", class: "app-pick", onclick: () => {
        pickApp(app.appid);
        location.hash = "#/rooms";
      } }, h("strong", {}, app.name), " ", h("span", { class: "mono" }, app.appid))));
    } catch (error) {
      toast(error.message, "error");
    }
  } }, field(t("apps.name"), name), h("button", { type: "submit" }, t("apps.add")));
  return { node: h("section", { class: "card" }, h("h1", {}, t("apps.title")), apps.length ? list : h("p", {}, t("apps.none")),
    session.role === "admin" ? addForm : null, created) };
}

const ROUTES = [
  [/^#\/login$/, () => loginView()],
  [/^#\/apps$/, () => appsView()],
  [/^#\/rooms$/, () => roomsView()],
  [/^#\/rooms\/new$/, () => roomFormView(null)],
  [/^#\/rooms\/(\d+)\/edit$/, (m) => roomFormView(Number(m[1]))],
  [/^#\/rooms\/(\d+)(?:\/(\w+))?$/, (m) => roomView(Number(m[1]), m[2] || "golive")],
  [/^#\/settings$/, () => settingsView()],
];

let routing = 0; // the newest route() call; an older one that finishes later closes what it made

async function route() {
  const turn = ++routing;
  leave();
  leave = () => {};
  document.getElementById("toast").className = "toast"; // a note of the last page does not follow to the next
  renderHeader();
  let hash = location.hash || "#/rooms";
  if (!session.role) hash = "#/login";
  else if (!session.app && hash !== "#/apps") hash = "#/apps";
  for (const [pattern, make] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    try {
      const made = await make(match);
      if (turn !== routing) {
        made.leave?.();
        return;
      }
      view.replaceChildren(made.node);
      leave = made.leave || (() => {});
      (made.focus || view).focus();
    } catch (error) {
      if (error.status === 401 || turn !== routing) return;
      view.replaceChildren(h("section", { class: "card" }, h("p", { class: "form-error", role: "alert" }, error.message)));
    }
    return;
  }
  view.replaceChildren(h("p", {}, t("common.notFound")));
}

async function start() {
  await load();
  onSignedOut(() => {
    session.role = null;
    location.hash = "#/login";
  });
  document.getElementById("lang").addEventListener("change", async (event) => {
    await switchTo(event.target.value);
    await route();
  });
  document.getElementById("logout").addEventListener("click", async () => {
    await call("POST", "/console/api/logout", undefined, { quiet401: true }).catch(() => null);
    session.role = null;
    session.csrf = "";
    location.hash = "#/login";
  });
  window.addEventListener("hashchange", route);
  try {
    adopt(await call("GET", "/console/api/me", undefined, { quiet401: true }));
    await learnZone();
  } catch {
    session.role = null;
  }
  await route();
  document.body.dataset.ready = "true";
}

start();
