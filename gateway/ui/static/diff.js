// A word-level diff: the longest common subsequence of the words (and punctuation marks) of two texts,
// rendered with <del> and <ins>. Whitespace is carried with the word after it and not compared, so a run of
// changes between two unchanged words shows as one deletion followed by one insertion.

// a word (letters, digits, marks, _ and ') or any other single character (punctuation, emoji), with the
// whitespace before it
const PIECE = /(\s*)([\p{L}\p{N}\p{M}_']+|[^\s\p{L}\p{N}\p{M}_'])/gu;

/** [{space, word}] of `text` and its trailing whitespace. */
export function pieces(text) {
  const s = String(text ?? "");
  const out = [];
  let end = 0;
  for (const m of s.matchAll(PIECE)) {
    out.push({ space: m[1], word: m[2] });
    end = m.index + m[0].length;
  }
  return { pieces: out, tail: s.slice(end) };
}

// Beyond this many cells of the LCS table the middle is shown as one deletion and one insertion.
const MAX_CELLS = 4_000_000;

/** [{op: "eq" | "del" | "ins", text}] turning `before` into `after` (eq text: as `after` has it). */
export function diffWords(before, after) {
  const { pieces: a } = pieces(before);
  const { pieces: b, tail } = pieces(after);
  let start = 0;
  while (start < a.length && start < b.length && a[start].word === b[start].word) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1].word === b[endB - 1].word) {
    endA--;
    endB--;
  }
  const steps = []; // [op, piece]
  for (let i = 0; i < start; i++) steps.push(["eq", b[i]]);
  middle(a.slice(start, endA), b.slice(start, endB), steps);
  for (let j = endB; j < b.length; j++) steps.push(["eq", b[j]]);
  const out = [];
  const emit = (op, text) => {
    if (!text) return;
    const last = out[out.length - 1];
    if (last && last.op === op) last.text += text;
    else out.push({ op, text });
  };
  let dels = [];
  let inss = [];
  const flush = () => {
    if (dels.length || inss.length) {
      emit("eq", (inss[0] || dels[0]).space); // the space before the change stays outside the marks
      emit("del", dels.map((p, i) => (i ? p.space : "") + p.word).join(""));
      emit("ins", inss.map((p, i) => (i ? p.space : "") + p.word).join(""));
    }
    dels = [];
    inss = [];
  };
  for (const [op, piece] of steps) {
    if (op === "del") dels.push(piece);
    else if (op === "ins") inss.push(piece);
    else {
      flush();
      emit("eq", piece.space + piece.word);
    }
  }
  flush();
  emit("eq", tail);
  return out;
}

function middle(a, b, steps) {
  const n = a.length;
  const m = b.length;
  if ((n + 1) * (m + 1) > MAX_CELLS) {
    for (const p of a) steps.push(["del", p]);
    for (const p of b) steps.push(["ins", p]);
    return;
  }
  // lcs[i * width + j]: length of the LCS of a[i:] and b[j:]
  const width = m + 1;
  const lcs = new Uint32Array((n + 1) * width);
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i * width + j] = a[i].word === b[j].word
        ? lcs[(i + 1) * width + j + 1] + 1
        : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
    }
  }
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i].word === b[j].word) {
      steps.push(["eq", b[j]]);
      i++;
      j++;
    } else if (lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
      steps.push(["del", a[i++]]);
    } else {
      steps.push(["ins", b[j++]]);
    }
  }
  while (i < n) steps.push(["del", a[i++]]);
  while (j < m) steps.push(["ins", b[j++]]);
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
