// Building elements. Every piece of data goes in as text (a text node or textContent), never as markup.

/**
 * h("div", {class: "x", onclick: fn, dataset: {id: "1"}}, "text", child) -> HTMLElement.
 * Strings among the children become text nodes; null/undefined/false children are skipped.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of `el` (strings as text). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function show(el, visible = true) {
  el.hidden = !visible;
}

const KINDS = ["error", "ok", "muted"];

/** A status line: `kind` is "" (plain), "error", "ok" or "muted" (the element's other classes stay). */
export function say(el, text, kind = "") {
  el.textContent = text || "";
  el.classList.remove(...KINDS);
  if (kind) el.classList.add(kind);
}

/** Milliseconds as "123 ms" or "1.23 s"; a missing value as "—". */
export function ms(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

/** Seconds since the epoch as a local date and time. */
export function when(seconds) {
  if (typeof seconds !== "number") return seconds == null ? "—" : String(seconds);
  return new Date(seconds * 1000).toLocaleString();
}

/** The text of a chat message's content: a string, or the text parts of a list of parts. */
export function contentText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((part) => (part && typeof part.text === "string" ? part.text : "")).join("");
  }
  return content == null ? "" : JSON.stringify(content);
}
