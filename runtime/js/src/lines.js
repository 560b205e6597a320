// The line rule of every seqship reader (Python runtime/textio.py, C++ runtime/cpp/lines.h, this one; the
// shared cases are tests/line_endings.py): a line ends at "\r\n", "\n" or a lone "\r", nothing else (U+2028,
// U+2029 and U+0085 are text); a terminator at the end of the input ends the last line without starting an
// empty one; a UTF-8 BOM at the very start is dropped. Bytes that are not UTF-8 are a TypeError.

const TERMINATOR = /[\r\n]/g;

/** Text in pieces -> complete lines; a "\r" at the end of a piece waits for the next one (it may be "\r\n"). */
export class LineSplitter {
  #rest = "";
  #started = false;

  /** The lines that `text` completes. */
  push(text) {
    if (!this.#started && text.length) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    const s = this.#rest + text;
    const out = [];
    let start = 0;
    TERMINATOR.lastIndex = 0;
    for (let m; (m = TERMINATOR.exec(s)) !== null; ) {
      const i = m.index;
      if (s[i] === "\r" && i + 1 === s.length) break; // "\r\n" split across pieces: wait
      out.push(s.slice(start, i));
      start = i + (s[i] === "\r" && s[i + 1] === "\n" ? 2 : 1);
      TERMINATOR.lastIndex = start;
    }
    this.#rest = s.slice(start);
    return out;
  }

  /** The last lines, once the input has ended. */
  end() {
    const s = this.#rest;
    this.#rest = "";
    if (s === "") return [];
    if (s === "\r") return [""];
    return [s.endsWith("\r") ? s.slice(0, -1) : s];
  }
}

/** Every line of a whole input (bytes, decoded as strict UTF-8, or a string). */
export function splitLines(input) {
  const text = typeof input === "string" ? input : new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(input);
  const splitter = new LineSplitter();
  return [...splitter.push(text), ...splitter.end()];
}

/** The lines of a stream of byte chunks (a file or process.stdin), as they complete. */
export async function* readLines(chunks) {
  const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  const splitter = new LineSplitter();
  for await (const chunk of chunks) {
    yield* splitter.push(typeof chunk === "string" ? chunk : decoder.decode(chunk, { stream: true }));
  }
  yield* splitter.push(decoder.decode());
  yield* splitter.end();
}
