// The playground: one prompt streamed through several arms at once, side by side, with what each arm's helpers
// did (the rewrite and the correction as word diffs), feedback per answer and a blind pairwise comparison.
//
// Conversations: each arm keeps its own history. A follow-up message goes to every arm after that arm's own
// earlier answers (what a user assigned to that arm would have seen), so the arms never see each other's
// answers. An arm whose turn failed keeps its history as it was (the failed turn is not part of it). The
// model and the arms are fixed while a conversation runs; "New conversation" starts over.

import { describe, errorOf, headers, postJSON } from "./api.js";
import { renderDiff } from "./diff.js";
import { fill, h, ms, say, show } from "./dom.js";
import { sseData } from "./sse.js";

export const KNOWN_ARMS = ["control", "rewrite", "align", "rewrite+align"];
const MAX_ARMS = 4;
const IDLE_MS = 120_000;

const $ = (id) => document.getElementById(id);

export class Playground {
  constructor(info) {
    this.info = info;
    this.histories = new Map(); // arm -> [{role, content}]
    this.panes = new Map(); // arm -> Pane
    this.controllers = new Set();
    this.busy = false;
    this.last = []; // the results of the last turn: [{arm, requestId, text}]
    this.buildControls();
    $("send").addEventListener("click", () => this.send());
    $("stop").addEventListener("click", () => this.stop());
    $("new-conversation").addEventListener("click", () => this.reset());
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.send();
      }
    });
    this.compare = new Compare();
  }

  buildControls() {
    const models = this.info.models || [];
    fill($("model"), models.map((m) => h("option", { value: m }, m)));
    const configured = this.info.arms || [];
    const arms = [...KNOWN_ARMS, ...configured.filter((a) => !KNOWN_ARMS.includes(a))];
    const defaults = new Set(["control", configured.find((a) => a !== "control") || "align"]);
    const box = $("arms");
    fill(box, h("legend", {}, "Arms"));
    for (const arm of arms) {
      const id = `arm-${arm.replace(/[^a-z0-9]+/gi, "-")}`;
      const input = h("input", { type: "checkbox", id, value: arm, checked: defaults.has(arm) });
      input.addEventListener("change", () => this.checkArms());
      box.append(h("span", { class: "arm-choice" }, input, h("label", { for: id }, arm)));
    }
    this.checkArms();
  }

  selectedArms() {
    return [...$("arms").querySelectorAll("input:checked")].map((input) => input.value);
  }

  checkArms() {
    const n = this.selectedArms().length;
    for (const input of $("arms").querySelectorAll("input")) input.disabled = this.started() || (!input.checked && n >= MAX_ARMS);
    $("send").disabled = this.busy || n === 0;
    say($("playground-message"), n === 0 ? "Pick at least one arm (two to four to compare)." : "", "muted");
  }

  started() {
    return this.histories.size > 0;
  }

  reset() {
    this.stop();
    this.histories.clear();
    this.panes.clear();
    this.last = [];
    fill($("panes"));
    this.compare.hide();
    $("model").disabled = false;
    this.checkArms();
    $("prompt").focus();
  }

  stop() {
    for (const controller of this.controllers) controller.abort();
  }

  async send() {
    const prompt = $("prompt").value;
    const arms = this.selectedArms();
    if (this.busy || !prompt.trim() || arms.length === 0) return;
    const model = $("model").value;
    this.busy = true;
    $("send").disabled = true;
    $("stop").disabled = false;
    $("model").disabled = true;
    this.compare.hide();
    for (const arm of arms) {
      if (!this.histories.has(arm)) this.histories.set(arm, []);
      if (!this.panes.has(arm)) {
        const pane = new Pane(arm);
        this.panes.set(arm, pane);
        $("panes").append(pane.el);
      }
    }
    this.checkArms();
    $("prompt").value = "";
    try {
      const results = await Promise.all(arms.map((arm) => this.runArm(arm, model, prompt)));
      this.last = results.filter((r) => r !== null);
      if (this.last.length >= 2) this.compare.offer(this.last);
    } finally {
      this.busy = false;
      $("stop").disabled = true;
      this.checkArms();
    }
  }

  /** One arm's turn: stream it into its pane; the result, or null when it failed (shown in the pane). */
  async runArm(arm, model, prompt) {
    const history = this.histories.get(arm);
    const messages = [...history, { role: "user", content: prompt }];
    const turn = this.panes.get(arm).turn(prompt);
    const controller = new AbortController();
    this.controllers.add(controller);
    turn.busy(true);
    try {
      const result = await streamChat({ arm, model, messages, signal: controller.signal, turn });
      history.push({ role: "user", content: prompt }, { role: "assistant", content: result.text });
      turn.finish(result);
      return { arm, ...result };
    } catch (error) {
      turn.fail(describeStreamError(error));
      return null;
    } finally {
      this.controllers.delete(controller);
      turn.busy(false);
    }
  }
}

function describeStreamError(error) {
  if (error instanceof TypeError) {
    return `The connection to the gateway was lost (${error.message}). The answer is incomplete.`;
  }
  return describe(error);
}

/**
 * POST /v1/chat/completions with stream: true through `arm`; `turn.update(text)` as deltas arrive.
 * Resolves {requestId, text, trace}; rejects on an error status, an error frame, or a stream that ends
 * without `data: [DONE]` (a gateway that went away).
 */
export async function streamChat({ arm, model, messages, signal, turn }) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({
      "Content-Type": "application/json",
      Accept: "text/event-stream",
      "X-Aligngate-Arm": arm,
      "X-Aligngate-Trace": "1",
    }),
    body: JSON.stringify({ model, messages, stream: true }),
    signal,
  });
  const requestId = response.headers.get("X-Request-Id");
  turn.setRequestId(requestId);
  if (!response.ok) throw await errorOf(response);
  if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
    throw new Error(`Expected a stream, got ${response.headers.get("Content-Type") || "no content type"}.`);
  }
  let text = "";
  let trace = null;
  let complete = false;
  for await (const data of sseData(response.body, { idleMs: IDLE_MS })) {
    if (data === "[DONE]") {
      complete = true;
      break;
    }
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      throw new Error("The gateway sent an event that is not JSON.");
    }
    if (chunk.error) {
      const code = chunk.error.code ? ` (${chunk.error.code})` : "";
      throw new Error(`${chunk.error.message || "The stream failed."}${code}`);
    }
    for (const choice of chunk.choices || []) {
      if ((choice.index ?? 0) === 0 && choice.delta && typeof choice.delta.content === "string") {
        text += choice.delta.content;
        turn.update(text);
      }
    }
    if (chunk.aligngate) trace = chunk.aligngate;
  }
  if (!complete) throw new Error("The stream ended before the answer was complete (did the gateway stop?).");
  return { requestId: (trace && trace.request_id) || requestId, text, trace };
}

/** An arm's column: its turns, newest last. */
class Pane {
  constructor(arm) {
    this.arm = arm;
    this.turns = h("div", { class: "turns" });
    this.el = h("section", { class: "pane card", dataset: { arm } }, h("h2", {}, arm), this.turns);
  }

  turn(prompt) {
    const turn = new Turn(this.arm, prompt);
    this.turns.append(turn.el);
    return turn;
  }
}

/** One message and its answer in one arm: the stream, the helpers' work, feedback. */
class Turn {
  constructor(arm, prompt) {
    this.arm = arm;
    this.prompt = prompt;
    this.requestId = null;
    this.rating = null;
    this.status = h("span", { class: "status" });
    this.spinner = h("span", { class: "spinner", "aria-hidden": "true" });
    this.answer = h("div", { class: "answer", "aria-live": "polite" });
    this.error = h("p", { class: "error turn-error", role: "alert", hidden: true });
    this.details = h("div", { class: "details" });
    this.feedback = h("div", { class: "feedback", hidden: true });
    this.el = h(
      "article",
      { class: "turn" },
      h("div", { class: "user" }, h("span", { class: "role" }, "you"), h("span", { class: "text" }, prompt)),
      h("div", { class: "head" }, this.spinner, this.status),
      this.answer,
      this.error,
      this.details,
      this.feedback,
    );
  }

  busy(on) {
    this.spinner.hidden = !on;
    if (on) say(this.status, "streaming…", "muted");
  }

  setRequestId(id) {
    this.requestId = id;
    this.el.dataset.requestId = id || "";
  }

  update(text) {
    this.answer.textContent = text;
  }

  fail(message) {
    this.el.classList.add("failed");
    say(this.status, "failed", "error");
    this.error.textContent = message;
    show(this.error);
    if (this.requestId) this.details.append(h("p", { class: "muted small" }, "request id ", h("code", {}, this.requestId)));
  }

  finish({ requestId, text, trace }) {
    this.setRequestId(requestId);
    this.update(text);
    say(this.status, "done", "ok");
    this.el.classList.add("done");
    const t = trace || {};
    const parts = [];
    const rewritten = typeof t.rewritten_prompt === "string" ? t.rewritten_prompt : null;
    if (rewritten !== null && rewritten !== this.prompt) {
      parts.push(h("div", { class: "rewrite" }, h("h3", {}, "Rewritten prompt"), renderDiff(this.prompt, rewritten)));
    }
    const raw = Array.isArray(t.original_content) ? t.original_content[0] : t.original_content;
    if (typeof raw === "string") {
      parts.push(
        raw === text
          ? h("p", { class: "muted small" }, "The aligner kept the backend's answer.")
          : h("div", { class: "correction" }, h("h3", {}, "Backend answer → corrected"), renderDiff(raw, text)),
      );
    }
    const helper = t.helper_ms || {};
    const facts = [["request id", requestId || "—"]];
    if (helper.rewriter != null || t.rewriter_skipped) facts.push(["rewriter", ms(helper.rewriter)]);
    if (helper.aligner != null || t.aligner_skipped) facts.push(["aligner", ms(helper.aligner)]);
    if (t.rewriter_skipped) facts.push(["rewriter skipped", t.rewriter_skipped]);
    if (t.aligner_skipped) facts.push(["aligner skipped", t.aligner_skipped]);
    parts.push(h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    fill(this.details, parts);
    if (requestId) this.buildFeedback();
  }

  buildFeedback() {
    const message = h("span", { class: "feedback-message", role: "status" });
    const up = h("button", { type: "button", class: "rate", title: "Good answer", "aria-label": "thumbs up" }, "👍 good");
    const down = h("button", { type: "button", class: "rate", title: "Bad answer", "aria-label": "thumbs down" }, "👎 bad");
    const editor = h("div", { class: "correction-editor", hidden: true });
    const textarea = h("textarea", { rows: 4, "aria-label": "correction" });
    const comment = h("input", { type: "text", placeholder: "comment (optional)", "aria-label": "comment" });
    const submit = h("button", { type: "button" }, "Send correction");
    editor.append(textarea, comment, submit);
    const write = h("button", { type: "button", class: "link" }, "write a correction");
    const rate = async (rating, extra = {}) => {
      for (const b of [up, down, submit]) b.disabled = true;
      say(message, "sending…", "muted");
      try {
        await postJSON("/v1/feedback", { request_id: this.requestId, rating, ...extra });
        this.rating = rating;
        up.classList.toggle("chosen", rating === 1);
        down.classList.toggle("chosen", rating === -1);
        say(message, extra.correction ? "Correction recorded." : `Recorded: ${rating === 1 ? "good" : "bad"}.`, "ok");
        if (extra.correction) show(editor, false);
      } catch (error) {
        say(message, `Feedback failed: ${describe(error)}`, "error");
      } finally {
        for (const b of [up, down, submit]) b.disabled = false;
      }
    };
    up.addEventListener("click", () => rate(1));
    down.addEventListener("click", () => rate(-1));
    write.addEventListener("click", () => {
      if (!textarea.value) textarea.value = this.answer.textContent;
      show(editor, editor.hidden);
      textarea.focus();
    });
    submit.addEventListener("click", () => {
      const extra = { correction: textarea.value };
      if (comment.value.trim()) extra.comment = comment.value.trim();
      rate(this.rating ?? -1, extra); // a correction says the answer needed one, unless rated 👍 already
    });
    fill(this.feedback, up, down, write, message, editor);
    show(this.feedback);
  }
}

/** "Which answer is better?": two arms' answers side by side in a random order, the arms hidden until chosen. */
class Compare {
  constructor() {
    this.el = $("compare");
    this.results = [];
    this.pair = null;
    $("compare-a").addEventListener("change", () => this.draw());
    $("compare-b").addEventListener("change", () => this.draw());
    $("prefer-left").addEventListener("click", () => this.choose("left"));
    $("prefer-right").addEventListener("click", () => this.choose("right"));
    $("prefer-tie").addEventListener("click", () => this.choose("tie"));
  }

  hide() {
    show(this.el, false);
    this.pair = null;
  }

  offer(results) {
    this.results = results;
    const options = () => results.map((r, i) => h("option", { value: String(i) }, r.arm));
    fill($("compare-a"), options());
    fill($("compare-b"), options());
    $("compare-a").value = "0";
    $("compare-b").value = "1";
    show(this.el);
    this.draw();
  }

  draw() {
    const a = this.results[Number($("compare-a").value)];
    const b = this.results[Number($("compare-b").value)];
    const same = !a || !b || a === b;
    for (const id of ["prefer-left", "prefer-right", "prefer-tie"]) $(id).disabled = same;
    if (same) {
      this.pair = null;
      for (const id of ["compare-left", "compare-right"]) fill($(id).querySelector(".text"));
      say($("compare-message"), "Pick two different arms.", "muted");
      return;
    }
    const left = Math.random() < 0.5 ? "a" : "b";
    this.pair = { a, b, left };
    const [l, r] = left === "a" ? [a, b] : [b, a];
    for (const [id, result] of [["compare-left", l], ["compare-right", r]]) {
      const side = $(id);
      side.dataset.requestId = result.requestId;
      fill(side.querySelector("h3"), id === "compare-left" ? "Left" : "Right");
      fill(side.querySelector(".text"), result.text);
    }
    say($("compare-message"), "", "");
  }

  async choose(side) {
    const pair = this.pair;
    if (!pair) return;
    const preferred = side === "tie" ? "tie" : side === "left" ? pair.left : pair.left === "a" ? "b" : "a";
    const buttons = ["prefer-left", "prefer-right", "prefer-tie"].map($);
    for (const b of buttons) b.disabled = true;
    say($("compare-message"), "sending…", "muted");
    try {
      await postJSON("/v1/preferences", {
        a: pair.a.requestId, b: pair.b.requestId, preferred, left: pair.left,
      });
      const [l, r] = pair.left === "a" ? [pair.a, pair.b] : [pair.b, pair.a];
      fill($("compare-left").querySelector("h3"), `Left: ${l.arm}`);
      fill($("compare-right").querySelector("h3"), `Right: ${r.arm}`);
      say($("compare-message"), `Recorded (${side}). Left was ${l.arm}, right was ${r.arm}.`, "ok");
    } catch (error) {
      const text = error.status === 404
        ? "This gateway does not record preferences yet (POST /v1/preferences answered 404)."
        : `The preference was not recorded: ${describe(error)}`;
      say($("compare-message"), text, "error");
      for (const b of buttons) b.disabled = false;
    }
  }
}
