// The app's settings: webhook URL and a signed test delivery with the answer shown, the play and
// push keys, quotas with today's use, and the transcode ladder.
import { get, patch, post } from "./api.js";
import { copyable, field, h, toast } from "./dom.js";
import { t } from "./i18n.js";

function savingForm(title, fields, collect, after = () => {}) {
  const error = h("p", { class: "form-error", role: "alert" });
  return h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    for (const wrapper of fields) wrapper.showError?.("");
    let changes;
    try {
      changes = collect();
    } catch (problem) {
      error.textContent = problem.message;
      return;
    }
    try {
      after(await patch("/api/v1/app", changes));
      toast(t("settings.saved"));
    } catch (problem) {
      const text = `${problem.message} (${problem.code})`;
      const named = fields.find((wrapper) => problem.message.includes(wrapper.dataset.name));
      if (named) named.showError(text);
      else error.textContent = text;
    }
  } }, h("h2", {}, title), ...fields, error, h("button", { type: "submit", class: "primary" }, t("settings.save")));
}

function named(wrapper, name) {
  wrapper.dataset.name = name;
  return wrapper;
}

async function webhookCard(app) {
  const url = h("input", { type: "url", name: "webhook_url", value: app.webhook_url, placeholder: "https://example.com/minilive" });
  const result = h("div", { class: "result", "aria-live": "polite", "data-testid": "webhook-result" });
  const test = h("button", { type: "button", onclick: async () => {
    result.replaceChildren(h("p", {}, t("settings.webhook.sending")));
    try {
      const answer = await post("/api/v1/app/webhook_test");
      result.replaceChildren(
        h("p", {}, t("settings.webhook.answer", { status: answer.status ?? "—", ms: answer.duration_ms ?? "—" })),
        answer.error ? h("p", { class: "form-error" }, answer.error) : null,
        answer.body ? h("pre", { class: "mono" }, answer.body) : null);
    } catch (error) {
      result.replaceChildren(h("p", { class: "form-error" }, `${error.message} (${error.code})`));
    }
  } }, t("settings.webhook.test"));
  const form = savingForm(t("settings.webhook.title"), [named(field(t("settings.webhook.url"), url, t("settings.webhook.urlHint")), "webhook_url")],
    () => ({ webhook_url: url.value.trim() }));
  form.append(copyable(t("settings.webhook.secret"), app.push_key, { secret: true }), h("p", { class: "hint" }, t("settings.webhook.secretHint")), test, result);
  return form;
}

function keysCard(app) {
  const play = h("input", { name: "play_key", value: app.play_key, autocomplete: "off", class: "mono" });
  const form = savingForm(t("settings.keys.title"), [named(field(t("settings.keys.play"), play, t("settings.keys.playHint")), "play_key")],
    () => ({ play_key: play.value.trim() }));
  form.insertBefore(copyable(t("settings.keys.push"), app.push_key, { secret: true }), form.querySelector(".form-error"));
  return form;
}

function ladderCard(app) {
  const ladder = h("textarea", { name: "renditions", rows: 4, class: "mono", value: app.renditions ? JSON.stringify(app.renditions, null, 1) : "" });
  return savingForm(t("settings.ladder.title"), [named(field(t("settings.ladder.label"), ladder, t("settings.ladder.hint")), "renditions")], () => {
    const text = ladder.value.trim();
    if (!text) return { renditions: null };
    try {
      return { renditions: JSON.parse(text) };
    } catch {
      throw new Error(t("settings.ladder.badJson"));
    }
  });
}

async function usageCard() {
  const card = h("section", { class: "card" }, h("h2", {}, t("settings.usage.title")));
  let usage;
  try {
    usage = await get("/api/v1/app/usage");
  } catch (error) {
    card.append(h("p", { class: "form-error" }, `${error.message} (${error.code})`));
    return card;
  }
  card.append(
    h("p", { class: "hint" }, t("settings.usage.day", { day: usage.day, zone: usage.time_zone })),
    h("table", {}, h("thead", {}, h("tr", {}, ...["api", "used", "quota"].map((c) => h("th", { scope: "col" }, t(`settings.usage.${c}`))))),
      h("tbody", {}, ...usage.endpoints.map(({ endpoint, calls, quota }) =>
        h("tr", {}, h("td", { class: "mono" }, endpoint), h("td", {}, String(calls)),
          h("td", {}, h("meter", { min: 0, max: quota || 1, value: calls, "aria-label": endpoint }), ` ${quota}`))))));
  return card;
}

export async function settingsView() {
  const app = await get("/api/v1/app");
  return {
    node: h("div", { class: "settings" }, h("h1", {}, t("settings.title"), " ", h("span", { class: "mono hint" }, app.appid)),
      await webhookCard(app), keysCard(app), await usageCard(), ladderCard(app)),
  };
}
