// A word-level diff (the longest common subsequence of words, punctuation and spaces), rendered with <del> and <ins>.

// whitespace runs, words (letters, digits, marks, _ and '), and each other character alone (punctuation, emoji)
const TOKEN = /\s+|[\p{L}\p{N}\p{M}_']+|[^\s\p{L}\p{N}\p{M}_']/gu;

/** Words, punctuation and the whitespace between them, in order; joined they give `text` back. */
export function tokens(text) {
  return String(text ?? "").match(TOKEN) || [];
}

// Beyond this many cells of the LCS table the middle is shown as one deletion and one insertion.
const MAX_CELLS = 4_000_000;

/** [{op: "eq" | "del" | "ins", text}] turning `before` into `after`, adjacent pieces of one kind merged. */
export function diffWords(before, after) {
  const a = tokens(before);
  const b = tokens(after);
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA--;
    endB--;
  }
  const ops = [];
  for (let i = 0; i < start; i++) ops.push(["eq", a[i]]);
  middle(a.slice(start, endA), b.slice(start, endB), ops);
  for (let i = endA; i < a.length; i++) ops.push(["eq", a[i]]);
  return merge(ops);
}

function middle(a, b, ops) {
  const n = a.length;
  const m = b.length;
  if ((n + 1) * (m + 1) > MAX_CELLS) {
    for (const t of a) ops.push(["del", t]);
    for (const t of b) ops.push(["ins", t]);
    return;
  }
  // lcs[i][j]: length of the LCS of a[i:] and b[j:]
  const width = m + 1;
  const lcs = new Uint32Array((n + 1) * width);
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i * width + j] = a[i] === b[j]
        ? lcs[(i + 1) * width + j + 1] + 1
        : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
    }
  }
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) {
      ops.push(["eq", a[i++]]);
      j++;
    } else if (lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
      ops.push(["del", a[i++]]);
    } else {
      ops.push(["ins", b[j++]]);
    }
  }
  while (i < n) ops.push(["del", a[i++]]);
  while (j < m) ops.push(["ins", b[j++]]);
}

function merge(ops) {
  const out = [];
  for (const [op, text] of ops) {
    const last = out[out.length - 1];
    if (last && last.op === op) last.text += text;
    else out.push({ op, text });
  }
  return out;
}

/** A <div class="diff"> showing `before` → `after`: removed words in <del>, added ones in <ins>, as text. */
export function renderDiff(before, after) {
  const box = document.createElement("div");
  box.className = "diff";
  for (const { op, text } of diffWords(before, after)) {
    if (op === "eq") {
      box.append(document.createTextNode(text));
    } else {
      const mark = document.createElement(op);
      mark.textContent = text;
      box.append(mark);
    }
  }
  return box;
}
