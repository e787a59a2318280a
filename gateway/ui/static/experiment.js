// The experiment tab: the A/B report of GET /ui/api/experiment, rendered generically: a table of the arms
// (the `arms` rows) and every other section the report has, whatever its keys.

import { describe, getJSON } from "./api.js";
import { fill, h, say } from "./dom.js";
import { isObject, label, number, table, value } from "./render.js";

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

/** GET /ui/api/experiment's answer as nodes: the report of JSON version 1 as tables, else generically. */
export function render(answer) {
  if (isObject(answer) && "report" in answer) {
    if (answer.report === null) {
      return [h("p", { class: "notice", role: "status" },
        `No requests of experiment ${answer.experiment ?? ""} yet in this window. Requests that force an arm ` +
        "(X-Aligngate-Arm, as the playground does) are left out of the A/B report, as they are not randomised.")];
    }
    return isObject(answer.report) && answer.report.version === 1 ? reportV1(answer.report) : generic(answer.report);
  }
  return generic(answer);
}

const pct = (x) => (typeof x === "number" ? `${(100 * x).toFixed(1)}%` : "—");
const pts = (x) => (typeof x === "number" ? `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)}` : "—");
const ms = (x) => (typeof x === "number" ? `${Math.round(x)} ms` : "—");
const pval = (x) => (typeof x === "number" ? (x < 0.001 ? "< 0.001" : x.toFixed(3)) : "—");

/** A rate as "25.0% (3/12) [9.0%, 53.2%]". */
function rate(r) {
  if (!isObject(r)) return "—";
  return `${pct(r.rate)} (${number(r.count)}/${r.n}) [${pct(r.low)}, ${pct(r.high)}]`;
}

/** A difference against control as "+12.0 pts [−3.1, +27.0], p 0.120, Holm 0.240". */
function comparison(c, { alwaysValid = false } = {}) {
  if (!isObject(c)) return "—";
  const parts = [`${pts(c.difference)} pts [${pts(c.low)}, ${pts(c.high)}]`, `p ${pval(c.p_value)}`, `Holm ${pval(c.p_holm)}`];
  if (alwaysValid && isObject(c.always_valid)) {
    parts.push(`always-valid [${pts(c.always_valid.low)}, ${pts(c.always_valid.high)}] p ${pval(c.always_valid.p_value)}`);
  }
  let text = parts.join(", ");
  if (c.significant) text += " — significant";
  if (c.rough) text += " (few events: rough)";
  return text;
}

function card(id, title, ...children) {
  return h("section", { class: "card", id }, h("h2", {}, title), ...children);
}

function reportV1(report) {
  const nodes = [];
  if (Array.isArray(report.summary) && report.summary.length) {
    nodes.push(card("experiment-summary", "Summary", h("ul", {}, report.summary.map((line) => h("li", {}, String(line).replace(/\*\*/g, ""))))));
  }
  const arms = Array.isArray(report.arms) ? report.arms : [];
  const rows = arms.map((a) => ({
    arm: a.arm,
    requests: a.requests,
    "error rate": rate(a.error_rate),
    "latency p50 / p95": `${ms(a.latency_p50_ms)} / ${ms(a.latency_p95_ms)}`,
    "rewriter / aligner p50": `${ms(a.rewriter_p50_ms)} / ${ms(a.aligner_p50_ms)}`,
    "thumbs-up rate": rate(a.thumbs_up),
    "thumbs-up vs control": a.vs_control ? comparison(a.vs_control.thumbs_up, { alwaysValid: true }) : "—",
  }));
  nodes.push(card("experiment-arms", "Arms", table(rows)));
  const guard = arms.map((a) => ({
    arm: a.arm,
    "errors vs control": a.vs_control ? comparison(a.vs_control.errors) : "—",
    "refusal rate": rate(a.refusals),
    "refusals vs control": a.vs_control ? comparison(a.vs_control.refusals) : "—",
    "aligner changed the answer": a.aligns ? rate(a.aligner_changed) : "—",
    "latency Δ p50 / p95": a.vs_control ? `${ms(a.vs_control.latency_p50_delta_ms)} / ${ms(a.vs_control.latency_p95_delta_ms)}` : "—",
  }));
  nodes.push(card("experiment-guardrails", "Guardrails", table(guard)));
  const srm = report.srm;
  if (isObject(srm)) {
    const status = srm.status === "not_run" ? `not run: ${srm.reason ?? ""}`
      : srm.status === "mismatch" ? `MISMATCH (p ${pval(srm.p_value)} < ${srm.threshold}): the observed shares differ from the configured ones; the results cannot be trusted`
        : `ok (p ${pval(srm.p_value)})`;
    const srmRows = (srm.arms || []).map((a) => ({ arm: a.arm, observed: a.observed, "observed share": pct(a.observed_share), "configured share": pct(a.expected_share) }));
    nodes.push(card("experiment-srm", "Sample ratio", h("p", { class: srm.status === "mismatch" ? "error" : "muted" }, `Sample-ratio check: ${status}`), srmRows.length ? table(srmRows) : ""));
  }
  if (Array.isArray(report.pairwise) && report.pairwise.length) {
    const pairRows = report.pairwise.map((p) => ({
      arm: p.arm, against: p.baseline, comparisons: p.n, "wins / ties / losses": `${p.wins} / ${p.ties} / ${p.losses}`,
      "win rate (ties ½)": rate(p.win_rate), "sign test p": pval(p.p_value),
    }));
    const bias = isObject(report.position_bias) ? h("p", { class: "muted" }, `Left side chosen: ${rate(report.position_bias.left)}, p ${pval(report.position_bias.p_value)}`) : "";
    nodes.push(card("experiment-pairwise", "Pairwise preferences", table(pairRows), bias));
  }
  const facts = { experiment: report.experiment, first: report.first, last: report.last, confidence: report.confidence, "planned ratings per arm": report.planned_n, "forced-arm requests left out": report.forced_excluded };
  nodes.push(card("experiment-facts", "About", h("dl", { class: "facts" }, Object.entries(facts).map(([k, v]) => [h("dt", {}, label(k)), h("dd", {}, k === "first" || k === "last" ? when(v) : value(v))]))));
  return nodes;
}

function when(epoch) {
  return typeof epoch === "number" ? new Date(epoch * 1000).toLocaleString() : "—";
}

/** Any report shape: its scalars first, then the arms' table, then each other section. */
export function generic(report) {
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
