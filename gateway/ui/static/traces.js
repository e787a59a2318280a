// The traces tab: recent requests (GET /ui/api/traces, filtered by arm, model, status and rating, paged with
// `before`) and, for the one clicked, its whole story (GET /ui/api/trace): the messages, the rewrite, the
// backend's answer against the one served, feedback, the shadow run and pairwise preferences.

import { describe, getJSON } from "./api.js";
import { renderDiff } from "./diff.js";
import { contentText, fill, h, ms, say, when } from "./dom.js";
import { unavailable } from "./experiment.js";
import { facts, isObject, table, value } from "./render.js";

const $ = (id) => document.getElementById(id);
const PAGE = 50;
// the row fields the list shows, in order
const COLUMNS = ["time", "arm", "model", "endpoint", "status", "outcome", "latency_ms", "rewriter_ms", "aligner_ms", "rating", "prompt"];
// the request fields the story shows on their own (the rest go to its table of facts)
const STORY = new Set(["messages", "rewritten_prompt", "raw_answer", "final_answer"]);

export class Traces {
  constructor(info) {
    this.info = info;
    this.loaded = false;
    this.rows = [];
    this.next = null;
    const options = (values) => [h("option", { value: "" }, "any"), ...values.map((v) => h("option", { value: v }, v))];
    fill($("traces-arm"), options(info.arms || []));
    fill($("traces-model"), options(info.models || []));
    for (const id of ["traces-arm", "traces-model", "traces-status", "traces-rated"]) {
      $(id).addEventListener("change", () => this.load());
    }
    $("traces-refresh").addEventListener("click", () => this.load());
  }

  shown() {
    if (!this.loaded) this.load();
  }

  filters() {
    return {
      arm: $("traces-arm").value,
      model: $("traces-model").value,
      status: $("traces-status").value,
      rated: $("traces-rated").value,
      limit: PAGE,
    };
  }

  async load(more = false) {
    this.loaded = true;
    const list = $("traces-list");
    if (this.info.store === false) {
      fill(list, unavailable("Traces need the trace store, which this gateway has off (store.enabled)."));
      return;
    }
    say($("traces-message"), "Loading…", "muted");
    try {
      const page = await getJSON("/ui/api/traces", { ...this.filters(), before: more ? this.next : "" });
      this.rows = more ? [...this.rows, ...(page.data || [])] : page.data || [];
      this.next = page.next_before ?? null;
      this.draw();
      say($("traces-message"), `${this.rows.length} request${this.rows.length === 1 ? "" : "s"}`, "muted");
    } catch (error) {
      say($("traces-message"), "");
      fill(list, error.status === 404 || error.status === 503
        ? unavailable(`Traces need the trace store and its API (GET /ui/api/traces answered ${error.status}: ${error.message}).`)
        : h("p", { class: "error", role: "alert" }, `The traces could not be loaded: ${describe(error)}`));
    }
  }

  draw() {
    const list = $("traces-list");
    if (this.rows.length === 0) {
      fill(list, h("p", { class: "muted" }, "No requests match."));
      return;
    }
    const rows = this.rows.map((row) => ({
      ...row,
      time: when(row.time),
      arm: row.arm_forced ? `${row.arm} (forced)` : row.arm,
      latency_ms: ms(row.latency_ms),
      rewriter_ms: ms(row.rewriter_ms),
      aligner_ms: ms(row.aligner_ms),
      rating: row.rating === 1 ? "👍" : row.rating === -1 ? "👎" : row.rating,
      prompt: typeof row.prompt === "string" && row.prompt.length > 120 ? `${row.prompt.slice(0, 120)}…` : row.prompt,
    }));
    const byId = new Map(this.rows.map((row) => [row.id, row]));
    const onRow = (tr, row) => {
      tr.tabIndex = 0;
      tr.dataset.id = row.id;
      tr.classList.add("clickable");
      const open = () => this.open(byId.get(row.id).id, tr);
      tr.addEventListener("click", open);
      tr.addEventListener("keydown", (event) => {
        if (event.key === "Enter") open();
      });
    };
    const nodes = [table(rows, { columns: COLUMNS, className: "data traces-table", onRow })];
    if (this.next !== null && this.next !== undefined) {
      nodes.push(h("button", { type: "button", id: "traces-more", onclick: () => this.load(true) }, "Older requests"));
    }
    fill(list, nodes);
  }

  async open(id, tr) {
    for (const row of $("traces-list").querySelectorAll("tr.selected")) row.classList.remove("selected");
    if (tr) tr.classList.add("selected");
    const out = $("trace-detail");
    fill(out, h("p", { class: "muted" }, "Loading…"));
    try {
      fill(out, story(await getJSON("/ui/api/trace", { id })));
    } catch (error) {
      fill(out, h("p", { class: "error", role: "alert" }, `The trace could not be loaded: ${describe(error)}`));
    }
  }
}

/** A request's whole story, as nodes. */
export function story(trace) {
  const request = isObject(trace.request) ? trace.request : {};
  const nodes = [h("h2", {}, "Request ", h("code", {}, request.id || "?"))];
  const messages = Array.isArray(request.messages) ? request.messages : [];
  if (messages.length) {
    nodes.push(h("section", { class: "messages" }, h("h3", {}, "Messages"), messages.map((m) =>
      h("div", { class: `message ${isObject(m) ? m.role : ""}` }, h("span", { class: "role" }, isObject(m) ? m.role : "?"),
        h("div", { class: "text" }, isObject(m) ? contentText(m.content) : value(m))))));
  }
  const lastUser = [...messages].reverse().find((m) => isObject(m) && m.role === "user");
  if (typeof request.rewritten_prompt === "string") {
    const original = lastUser ? contentText(lastUser.content) : "";
    nodes.push(h("section", {}, h("h3", {}, "Rewritten prompt"), renderDiff(original, request.rewritten_prompt)));
  }
  if (typeof request.raw_answer === "string" || typeof request.final_answer === "string") {
    const raw = request.raw_answer ?? "";
    const final = request.final_answer ?? "";
    nodes.push(raw === final || typeof request.raw_answer !== "string"
      ? h("section", {}, h("h3", {}, "Answer"), h("div", { class: "answer" }, final))
      : h("section", {}, h("h3", {}, "Backend answer → answer served"), renderDiff(raw, final)));
  }
  const rest = Object.fromEntries(Object.entries(request).filter(([k]) => !STORY.has(k)));
  nodes.push(h("section", {}, h("h3", {}, "Details"), facts(rest)));
  const feedback = Array.isArray(trace.feedback) ? trace.feedback : [];
  nodes.push(h("section", { class: "trace-feedback" }, h("h3", {}, "Feedback"),
    feedback.length ? table(feedback) : h("p", { class: "muted" }, "None.")));
  if (isObject(trace.shadow)) {
    const shadow = { ...trace.shadow };
    const parts = [h("h3", {}, "Shadow run")];
    if (typeof shadow.corrected_answer === "string" && typeof request.final_answer === "string") {
      parts.push(h("p", { class: "muted small" }, "The answer served → the shadow correction"),
        renderDiff(request.final_answer, shadow.corrected_answer));
      delete shadow.corrected_answer;
    }
    parts.push(facts(shadow));
    nodes.push(h("section", { class: "trace-shadow" }, parts));
  }
  const preferences = Array.isArray(trace.preferences) ? trace.preferences : [];
  if (preferences.length) nodes.push(h("section", { class: "trace-preferences" }, h("h3", {}, "Preferences"), table(preferences)));
  return nodes;
}
