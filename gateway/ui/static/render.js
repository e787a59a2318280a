// Rendering JSON of unknown shape as tables and lists, as text: the experiment report and the trace pages
// show whatever fields the gateway sends, so a field added later shows up without a change here.

import { h } from "./dom.js";

const INTERVAL_VALUE = ["value", "estimate", "rate", "diff", "difference", "mean", "point"];
const INTERVAL_BOUNDS = [["low", "high"], ["lower", "upper"], ["lo", "hi"], ["ci_low", "ci_high"]];

export function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** "Thumbs-up rate", from "thumbs_up_rate". */
export function label(key) {
  const text = String(key).replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export function number(value) {
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 0.001 || abs >= 1e6)) return value.toExponential(2);
  return String(Number(value.toPrecision(4)));
}

/** An interval object ({value, low, high} and the like) as "0.52 [0.41, 0.63]"; null when it is not one. */
function interval(obj) {
  for (const [lo, hi] of INTERVAL_BOUNDS) {
    if (typeof obj[lo] === "number" && typeof obj[hi] === "number") {
      const key = INTERVAL_VALUE.find((k) => typeof obj[k] === "number");
      const bounds = `[${number(obj[lo])}, ${number(obj[hi])}]`;
      const rest = Object.keys(obj).filter((k) => k !== lo && k !== hi && k !== key);
      if (rest.length) return null;
      return key ? `${number(obj[key])} ${bounds}` : bounds;
    }
  }
  return null;
}

/** A value as a node or a string: scalars as text, intervals compactly, lists and objects as tables. */
export function value(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return number(v);
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    if (v.length === 0) return "—";
    if (v.every(isObject)) return table(v);
    if (v.every((x) => !isObject(x) && !Array.isArray(x))) return v.map((x) => value(x)).join(", ");
    return h("ul", {}, v.map((x) => h("li", {}, value(x))));
  }
  if (isObject(v)) return interval(v) ?? facts(v);
  return String(v);
}

/** Objects as a table: a column per key (in order of first appearance). */
export function table(rows, { columns, className = "data", onRow } = {}) {
  const keys = columns || [...new Set(rows.flatMap((row) => Object.keys(row)))];
  const head = h("thead", {}, h("tr", {}, keys.map((k) => h("th", { scope: "col" }, label(k)))));
  const body = h(
    "tbody",
    {},
    rows.map((row) => {
      const tr = h("tr", {}, keys.map((k) => h("td", {}, value(row[k]))));
      if (onRow) onRow(tr, row);
      return tr;
    }),
  );
  return h("div", { class: "table-wrap" }, h("table", { class: className }, head, body));
}

/** An object as a definition list. */
export function facts(obj) {
  const keys = Object.keys(obj);
  if (keys.length === 0) return "—";
  return h("dl", { class: "facts" }, keys.map((k) => [h("dt", {}, label(k)), h("dd", {}, value(obj[k]))]));
}
