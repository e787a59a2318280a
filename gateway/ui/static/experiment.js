// The experiment tab: the A/B report of GET /ui/api/experiment, rendered generically: a table of the arms
// (the `arms` rows) and every other section the report has, whatever its keys.

import { describe, getJSON } from "./api.js";
import { fill, h, say } from "./dom.js";
import { isObject, label, table, value } from "./render.js";

const $ = (id) => document.getElementById(id);

export class Experiment {
  constructor(info) {
    this.info = info;
    this.loaded = false;
    $("experiment-refresh").addEventListener("click", () => this.load());
    $("experiment-since").addEventListener("change", () => this.load());
  }

  shown() {
    if (!this.loaded) this.load();
  }

  async load() {
    this.loaded = true;
    const out = $("experiment-report");
    if (this.info.store === false) {
      say($("experiment-message"), "");
      fill(out, unavailable("The experiment report needs the trace store, which this gateway has off (store.enabled)."));
      return;
    }
    const seconds = Number($("experiment-since").value);
    const since = seconds ? Math.floor(Date.now() / 1000) - seconds : "";
    $("experiment-refresh").disabled = true;
    say($("experiment-message"), "Loading…", "muted");
    try {
      const report = await getJSON("/ui/api/experiment", { since });
      fill(out, render(report));
      say($("experiment-message"), `Updated ${new Date().toLocaleTimeString()}.`, "muted");
    } catch (error) {
      say($("experiment-message"), "");
      fill(out, error.status === 404 || error.status === 503
        ? unavailable(`The experiment report needs the trace store and its API (GET /ui/api/experiment answered ${error.status}: ${error.message}).`)
        : h("p", { class: "error", role: "alert" }, `The report could not be loaded: ${describe(error)}`));
    } finally {
      $("experiment-refresh").disabled = false;
    }
  }
}

export function unavailable(text) {
  return h("p", { class: "notice unavailable", role: "status" }, text);
}

/** The report as nodes: its scalars first, then the arms' table, then each other section. */
export function render(report) {
  if (!isObject(report)) return h("p", {}, value(report));
  const scalars = Object.entries(report).filter(([, v]) => !isObject(v) && !Array.isArray(v));
  const nodes = [];
  if (scalars.length) {
    nodes.push(h("section", { class: "card" }, h("dl", { class: "facts" }, scalars.map(([k, v]) => [h("dt", {}, label(k)), h("dd", {}, value(v))]))));
  }
  const arms = report.arms;
  if (Array.isArray(arms) && arms.length && arms.every(isObject)) {
    nodes.push(h("section", { class: "card", id: "experiment-arms" }, h("h2", {}, "Arms"), table(arms)));
  } else if (isObject(arms)) {
    const rows = Object.entries(arms).map(([arm, row]) => (isObject(row) ? { arm, ...row } : { arm, value: row }));
    nodes.push(h("section", { class: "card", id: "experiment-arms" }, h("h2", {}, "Arms"), table(rows)));
  }
  for (const [key, section] of Object.entries(report)) {
    if (key === "arms" || (!isObject(section) && !Array.isArray(section))) continue;
    nodes.push(h("section", { class: "card section", dataset: { section: key } }, h("h2", {}, label(key)), value(section)));
  }
  if (nodes.length === 0) nodes.push(h("p", { class: "muted" }, "The report is empty (no requests yet?)."));
  return nodes;
}
