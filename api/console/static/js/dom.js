// Building the page from data without innerHTML (names and comments are never markup), and the
// shared pieces: fields with their error line, the confirmation dialog, the status line.
import { t } from "./i18n.js";

// h("button", {class: "primary", onclick}, "text", child...): an element.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

let fieldCount = 0;

// A labelled input with the line where its validation message goes (aria-describedby).
export function field(labelText, input, hint = "") {
  const id = input.id || `f${++fieldCount}`;
  input.id = id;
  const error = h("p", { class: "field-error", id: `${id}-error`, role: "alert" });
  const described = [error.id];
  const hintNode = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintNode) described.push(hintNode.id);
  input.setAttribute("aria-describedby", described.join(" "));
  const wrapper = h("div", { class: "field" }, h("label", { for: id }, labelText), input, hintNode, error);
  wrapper.showError = (message) => {
    error.textContent = message || "";
    input.setAttribute("aria-invalid", message ? "true" : "false");
  };
  return wrapper;
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = `toast ${kind}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (box.className = "toast"), 6000);
}

// Ask before a consequential action. Resolves true on confirm; Escape or cancel resolve false.
// The native <dialog> traps focus and closes on Escape; focus returns to the opener.
export function confirmAction(title, message, confirmLabel) {
  const dialog = document.getElementById("confirm");
  const opener = document.activeElement;
  dialog.replaceChildren(
    h("form", { method: "dialog" },
      h("h2", { id: "confirm-title" }, title),
      h("p", {}, message),
      h("div", { class: "actions" },
        h("button", { value: "cancel", type: "submit" }, t("common.cancel")),
        h("button", { value: "ok", type: "submit", class: "danger", autofocus: true }, confirmLabel))));
  dialog.setAttribute("aria-labelledby", "confirm-title");
  dialog.returnValue = "cancel";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (opener && opener.focus) opener.focus();
      resolve(dialog.returnValue === "ok");
    }, { once: true });
  });
}

// Copy to the clipboard; where the page may not (plain http, no permission), select the text instead.
export async function copy(text, source) {
  try {
    await navigator.clipboard.writeText(text);
    toast(t("common.copied"));
  } catch {
    if (source && source.select) source.select();
    toast(t("common.copyManually"));
  }
}

export function copyable(label, value, { secret = false, testid = "" } = {}) {
  const input = h("input", { type: secret ? "password" : "text", readOnly: true, value, class: "mono", "data-testid": testid || null });
  const wrapper = field(label, input);
  const buttons = [h("button", { type: "button", onclick: () => copy(value, input) }, t("common.copy"))];
  if (secret) {
    buttons.push(h("button", { type: "button", "aria-pressed": "false", onclick: (e) => {
      const shownNow = input.type === "password";
      input.type = shownNow ? "text" : "password";
      e.currentTarget.setAttribute("aria-pressed", String(shownNow));
    } }, t("common.show")));
  }
  const after = input.nextSibling; // taken before the row moves the input into itself
  wrapper.insertBefore(h("div", { class: "copy-row" }, input, ...buttons), after);
  return wrapper;
}

export const STATUS_CLASS = { 101: "live", 102: "upcoming", 103: "ended", 104: "banned", 105: "paused", 106: "interrupted", 107: "expired" };

export function badge(status) {
  return setBadge(h("span", {}), status);
}

// Updates a badge in place (live status messages change it without a reload).
export function setBadge(node, status) {
  node.className = `badge ${STATUS_CLASS[status] || ""}`;
  node.dataset.status = String(status);
  node.dataset.testid = "status";
  node.textContent = `${t(`status.${status}`)} · ${status}`;
  return node;
}
