// Server-sent events from a fetch() body: the data of each event, decoded as UTF-8 across chunk boundaries.

const BOUNDARY = /\r?\n\r?\n/;

/** The data of one event block (its `data:` lines joined by newlines), or null when it has none. */
export function eventData(block) {
  const lines = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith("data:")) lines.push(line.slice(line.startsWith("data: ") ? 6 : 5));
  }
  return lines.length ? lines.join("\n") : null;
}

/**
 * Yields the data of each event of `body` (a ReadableStream of bytes) as it arrives. A TextDecoder in stream
 * mode keeps a UTF-8 character split between two chunks whole. `idleMs`: a stream that sends nothing for that
 * long is given up (an Error).
 */
export async function* sseData(body, { idleMs = 0 } = {}) {
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await readWithin(reader, idleMs);
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      let match;
      while ((match = BOUNDARY.exec(buffer)) !== null) {
        const data = eventData(buffer.slice(0, match.index));
        buffer = buffer.slice(match.index + match[0].length);
        if (data !== null) yield data;
      }
      if (done) break;
    }
    const last = eventData(buffer);
    if (last !== null) yield last;
  } finally {
    reader.cancel().catch(() => {});
  }
}

function readWithin(reader, idleMs) {
  if (!idleMs) return reader.read();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`The gateway sent nothing for ${idleMs / 1000} s.`)), idleMs);
  });
  return Promise.race([reader.read(), timeout]).finally(() => clearTimeout(timer));
}
