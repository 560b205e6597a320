// The seqship tokenizer spec (tokenizer.json), implemented for JavaScript. Same steps, same ids as
// runtime/tokenizer.py; the cross-runtime parity test compares the ids of real texts one by one.

export class InputError extends Error {
  constructor(message, index) {
    super(message);
    this.name = "InputError";
    this.index = index;
  }
}

export class TokenizerError extends Error {
  constructor(message) {
    super(message);
    this.name = "TokenizerError";
  }
}

// Python's str.isspace() set, as in the spec (step 4).
const WHITESPACE = new Set(
  [0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680,
   0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a,
   0x2028, 0x2029, 0x202f, 0x205f, 0x3000].map((c) => String.fromCodePoint(c)),
);
const WORD_CHAR = /^[\p{L}\p{M}\p{N}\p{Pc}]$/u;
const FORMS = new Set(["NFC", "NFKC", "NFD", "NFKD", null]);

function isAscii(text) {
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) > 0x7f) return false;
  return true;
}

function strip(chars) {
  let start = 0;
  let end = chars.length;
  while (start < end && WHITESPACE.has(chars[start])) start++;
  while (end > start && WHITESPACE.has(chars[end - 1])) end--;
  return chars.slice(start, end);
}

export class Tokenizer {
  constructor(spec) {
    if (spec.format !== "seqship.tokenizer") throw new TokenizerError(`tokenizer format is ${spec.format}, expected seqship.tokenizer`);
    if (spec.format_version !== 1) throw new TokenizerError(`tokenizer format_version ${spec.format_version} is not supported (this runtime reads 1)`);
    if (!["char", "word"].includes(spec.type)) throw new TokenizerError(`tokenizer type ${spec.type} is unknown`);
    if (!FORMS.has(spec.normalization)) throw new TokenizerError(`tokenizer normalization ${spec.normalization} is unknown`);
    this.spec = spec;
    this.ids = new Map();
    spec.vocab.forEach((tok, i) => {
      if (i !== spec.pad_id && i !== spec.unk_id) this.ids.set(tok, i);
    });
  }

  get vocabSize() {
    return this.spec.vocab.length;
  }

  /** Steps 2-5: every token of a text, before truncation. Code points, never UTF-16 units. */
  tokens(text) {
    const s = this.spec;
    if (s.normalization && !isAscii(text)) text = text.normalize(s.normalization);
    if (s.lowercase) text = text.toLowerCase();
    const chars = strip(Array.from(text));
    if (s.type === "char") return chars;
    const out = [];
    let run = "";
    for (const ch of chars) {
      if (WORD_CHAR.test(ch)) {
        run += ch;
        continue;
      }
      if (run) {
        out.push(run);
        run = "";
      }
      if (!WHITESPACE.has(ch)) out.push(ch);
    }
    if (run) out.push(run);
    return out;
  }

  /** Token ids of one text (at most max_length) and whether it was truncated. */
  encode(text, index = 0) {
    if (typeof text !== "string") throw new InputError(`text #${index} is a ${text === null ? "null" : typeof text}, not a string`, index);
    const tokens = this.tokens(text);
    if (tokens.length === 0) {
      throw new InputError(`text #${index} is empty after normalisation: the model needs at least one token`, index);
    }
    const unk = this.spec.unk_id;
    const kept = tokens.slice(0, this.spec.max_length);
    return { ids: kept.map((t) => this.ids.get(t) ?? unk), truncated: tokens.length > this.spec.max_length };
  }
}
