// UI text in Chinese and English: the browser's language picks one, the header's switch changes it.

const LANGS = ["zh", "en"];
let texts = {};
export let lang = "en";

function preferred() {
  const saved = localStorage.getItem("minilive.lang");
  if (LANGS.includes(saved)) return saved;
  const browser = (navigator.languages || [navigator.language]).find(Boolean) || "en";
  return browser.toLowerCase().startsWith("zh") ? "zh" : "en";
}

export async function load(choice = preferred()) {
  const response = await fetch(`i18n/${choice}.json`);
  texts = await response.json();
  lang = choice;
  document.documentElement.lang = choice === "zh" ? "zh-CN" : "en";
}

export async function switchTo(choice) {
  localStorage.setItem("minilive.lang", choice);
  await load(choice);
}

// t("rooms.count", {n: 3}): the text of a key with {name} filled in; the key itself if missing.
export function t(key, vars = {}) {
  const text = texts[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}

export { LANGS };
