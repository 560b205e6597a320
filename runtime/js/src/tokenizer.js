// The seqship tokenizer spec (tokenizer.json, format_version 2), implemented for JavaScript. Same
// checks, same steps, same ids as runtime/tokenizer.py; the cross-runtime parity test compares the ids
// of real texts one by one.
//
// Unicode versions. Normalisation, lower-casing and the word-character classes come from the Unicode
// tables of the runtime (Node: process.versions.unicode; Python: unicodedata.unidata_version). For code
// points assigned in both versions they agree (Unicode's stability policies; measured between Unicode
// 14.0 and 17.0 over every code point), so a text is tokenized as in training unless it holds a code point
// that is unassigned (General Category Cn) in the spec's version or in this runtime's. The spec records
// its version (`unicode_version`) and its unassigned code points (`unassigned`); when the runtime's
// version differs, policy "refuse" (the default) refuses exactly those texts with an InputError, and
// policy "warn" warns once and tokenizes everything.
import { InputError, TokenizerError } from "./errors.js";
import { decodeUtf8, JsonSyntaxError, parseJson } from "./json.js";

export { InputError, TokenizerError } from "./errors.js";

export const FORMAT = "seqship.tokenizer";
export const FORMAT_VERSION = 2;
const TYPES = ["char", "word"];
const FORMS = ["NFC", "NFKC", "NFD", "NFKD", null];
const KEYS = ["lowercase", "max_length", "normalization", "pad_id", "type", "unassigned", "unicode_version", "unk_id", "vocab"];
const POLICIES = ["refuse", "warn"];
export const MAX_LENGTH = 1_000_000; // tokens kept per text, at most (as runtime/tokenizer.py): a bound on what one text can cost
const VERSION = /^[0-9]{1,3}\.[0-9]{1,3}(\.[0-9]{1,3})?$/; // as runtime/tokenizer.py (ASCII digits)
const RANGE = /^([0-9A-F]{4,6})-([0-9A-F]{4,6})$/;

// Python's str.isspace() set, as in the spec (step 4).
const WHITESPACE = new Set(
  [0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680,
   0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a,
   0x2028, 0x2029, 0x202f, 0x205f, 0x3000].map((c) => String.fromCodePoint(c)),
);
const WORD_CHAR = /^[\p{L}\p{M}\p{N}\p{Pc}]$/u;
const UNASSIGNED_HERE = /\p{Cn}/u;

function isAscii(text) {
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) > 0x7f) return false;
  return true;
}

function strip(chars) {
  let start = 0;
  let end = chars.length;
  // step 4: a byte order mark (U+FEFF) at the start, in any mix with whitespace, is stripped too
  while (start < end && (WHITESPACE.has(chars[start]) || chars[start] === "\ufeff")) start++;
  while (end > start && WHITESPACE.has(chars[end - 1])) end--;
  return chars.slice(start, end);
}

const show = (v) => (v === undefined ? "undefined" : JSON.stringify(v));
// A number JSON wrote as a float ("16.0") reads as 16 in JavaScript; say so rather than print "16".
const showNumber = (o, k, isInteger) => (typeof o[k] === "number" && Number.isInteger(o[k]) && !isInteger(o, k) ? `${o[k]}.0 (a float)` : show(o[k]));
const hex = (cp) => "U+" + cp.toString(16).toUpperCase().padStart(4, "0");

/** "14.0" -> [14, 0, 0]: versions compare as integer triples. */
function versionTuple(v) {
  const parts = v.split(".").map(Number);
  while (parts.length < 3) parts.push(0);
  return parts;
}

/** This runtime's Unicode version ("17.0" on Node 20), or null where it cannot be known (a browser). */
export function runtimeUnicodeVersion() {
  const v = globalThis.process?.versions?.unicode;
  return typeof v === "string" && VERSION.test(v) ? v : null;
}

/** Parse the `unassigned` ranges into sorted [lo, hi] arrays, or throw TokenizerError. */
function parseRanges(text, source) {
  const bad = (why) => new TokenizerError(`${source}: 'unassigned' ${why}; expected space-separated upper-case hex ranges "LO-HI", sorted and non-overlapping`);
  if (typeof text !== "string") throw bad(`must be a string, got ${show(text)}`);
  if (text === "") throw bad("is empty (every Unicode version has unassigned code points)");
  const parts = text.split(" ");
  const lo = new Uint32Array(parts.length);
  const hi = new Uint32Array(parts.length);
  let prev = -1;
  parts.forEach((part, i) => {
    const m = RANGE.exec(part);
    if (!m) throw bad(`has a malformed range ${show(part)} (item ${i})`);
    const a = parseInt(m[1], 16);
    const b = parseInt(m[2], 16);
    if (b > 0x10ffff || a > b) throw bad(`has an invalid range ${part} (item ${i})`);
    if (a <= prev) throw bad(`is not sorted and non-overlapping at ${part} (item ${i})`);
    lo[i] = a;
    hi[i] = b;
    prev = b;
  });
  return { lo, hi };
}

/** Full validation of a parsed tokenizer.json, in the order runtime/tokenizer.py makes its checks. */
export function checkSpec(d, source = "tokenizer.json", isInteger = (o, k) => Number.isInteger(o[k])) {
  if (typeof d !== "object" || d === null || Array.isArray(d)) {
    throw new TokenizerError(`${source}: expected a JSON object, got ${Array.isArray(d) ? "an array" : show(d)}`);
  }
  if (d.format !== FORMAT) throw new TokenizerError(`${source}: 'format' is ${show(d.format)}, expected "${FORMAT}"`);
  if (d.format_version === 1 && isInteger(d, "format_version")) {
    throw new TokenizerError(
      `${source}: format_version 1 was written by an older seqship (this runtime reads version ${FORMAT_VERSION}); ` +
        "rebuild it with this seqship: `pipeline run export --force`, then `pipeline run all`",
    );
  }
  if (d.format_version !== FORMAT_VERSION || !isInteger(d, "format_version")) {
    throw new TokenizerError(
      `${source}: format_version ${showNumber(d, "format_version", isInteger)} is not supported (this runtime reads version ${FORMAT_VERSION}); upgrade seqship or re-export the bundle`,
    );
  }
  const missing = KEYS.filter((k) => !Object.hasOwn(d, k));
  if (missing.length) throw new TokenizerError(`${source}: missing keys ${show(missing)}`);
  if (!Array.isArray(d.vocab) || !d.vocab.every((t) => typeof t === "string")) {
    throw new TokenizerError(`${source}: 'vocab' must be a list of strings`);
  }
  if (!TYPES.includes(d.type)) throw new TokenizerError(`${source}: tokenizer type ${show(d.type)} is unknown: use one of ${show(TYPES)}`);
  if (!FORMS.includes(d.normalization)) {
    throw new TokenizerError(`${source}: tokenizer normalization ${show(d.normalization)} is unknown: use one of ${show(FORMS)}`);
  }
  if (typeof d.lowercase !== "boolean") throw new TokenizerError(`${source}: tokenizer lowercase must be true or false, got ${show(d.lowercase)}`);
  for (const k of ["max_length", "pad_id", "unk_id"]) {
    if (!isInteger(d, k)) throw new TokenizerError(`${source}: tokenizer ${k} must be an integer, got ${showNumber(d, k, isInteger)}`);
  }
  if (d.max_length < 1 || d.max_length > MAX_LENGTH) {
    throw new TokenizerError(`${source}: tokenizer max_length must be an integer from 1 to ${MAX_LENGTH}, got ${show(d.max_length)}`);
  }
  const n = d.vocab.length;
  for (const k of ["pad_id", "unk_id"]) {
    if (!(d[k] >= 0 && d[k] < n)) throw new TokenizerError(`${source}: tokenizer ${k}=${show(d[k])} is outside the vocabulary (size ${n})`);
  }
  if (d.pad_id === d.unk_id) throw new TokenizerError(`${source}: tokenizer pad_id and unk_id must differ`);
  const seen = new Set();
  for (const t of d.vocab) {
    if (seen.has(t)) throw new TokenizerError(`${source}: tokenizer vocab lists ${show(t)} more than once`);
    seen.add(t);
  }
  if (typeof d.unicode_version !== "string" || !VERSION.test(d.unicode_version)) {
    throw new TokenizerError(`${source}: 'unicode_version' must be a version string like "14.0.0", got ${show(d.unicode_version)}`);
  }
  return parseRanges(d.unassigned, source);
}

/** Parse tokenizer.json's bytes (or text) strictly: TokenizerError on bad UTF-8, bad JSON or a bad spec. */
export function parseSpec(bytesOrText, source = "tokenizer.json") {
  let text = bytesOrText;
  if (typeof text !== "string") {
    try {
      text = decodeUtf8(bytesOrText);
    } catch {
      throw new TokenizerError(`${source} is not valid UTF-8`);
    }
  }
  let parsed;
  try {
    parsed = parseJson(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError) throw new TokenizerError(`${source} is not valid JSON: ${e.message}`);
    throw e;
  }
  checkSpec(parsed.value, source, parsed.isInteger);
  return parsed.value;
}

export class Tokenizer {
  /**
   * `spec`: a parsed tokenizer.json (validated here). Options: `unicodeMismatch` "refuse" (default) or
   * "warn"; `source` names the spec in messages; `runtimeUnicodeVersion` overrides the detected version
   * of this runtime (null: unknown, as in a browser).
   */
  constructor(spec, options = {}) {
    const { unicodeMismatch = "refuse", source = "tokenizer.json", runtimeUnicodeVersion: here = runtimeUnicodeVersion(), ...rest } = options;
    const unknown = Object.keys(rest);
    if (unknown.length) throw new TypeError(`Tokenizer: unknown option(s) ${unknown.join(", ")}; known: unicodeMismatch, source, runtimeUnicodeVersion`);
    if (!POLICIES.includes(unicodeMismatch)) throw new TypeError(`unicodeMismatch must be "refuse" or "warn", got ${show(unicodeMismatch)}`);
    if (here !== null && (typeof here !== "string" || !VERSION.test(here))) throw new TypeError(`runtimeUnicodeVersion must be a version string or null, got ${show(here)}`);
    const ranges = checkSpec(spec, source);
    this.spec = spec;
    this.source = source;
    this.unicodeVersion = here; // this runtime's Unicode version; null where unknown
    this.specUnicodeVersion = spec.unicode_version; // the version the tokenizer was built (and trained) with
    this.unicodeMismatchPolicy = unicodeMismatch;
    this.unicodeMatches = here !== null && versionTuple(here).join(".") === versionTuple(spec.unicode_version).join(".");
    this._lo = ranges.lo;
    this._hi = ranges.hi;
    this._checkUnicode = !this.unicodeMatches && unicodeMismatch === "refuse";
    if (!this.unicodeMatches && unicodeMismatch === "warn") {
      console.warn(
        `seqship: ${source} was built with Unicode ${spec.unicode_version}, this runtime ${here === null ? "does not report its Unicode version (unknown)" : `has Unicode ${here}`}; ` +
          "texts with code points unassigned in either version may be tokenized differently from training (unicodeMismatch: 'warn')",
      );
    }
    this.ids = new Map();
    spec.vocab.forEach((tok, i) => {
      if (i !== spec.pad_id && i !== spec.unk_id) this.ids.set(tok, i);
    });
  }

  /** A tokenizer from tokenizer.json's bytes or text (strict JSON: 16.0 is not an integer). */
  static fromJson(bytesOrText, options = {}) {
    return new Tokenizer(parseSpec(bytesOrText, options.source ?? "tokenizer.json"), options);
  }

  get vocabSize() {
    return this.spec.vocab.length;
  }

  /** Whether code point `cp` is unassigned in the spec's Unicode version (binary search of its ranges). */
  unassignedInSpec(cp) {
    const lo = this._lo;
    let a = 0;
    let b = lo.length - 1;
    while (a <= b) {
      const m = (a + b) >> 1;
      if (cp < lo[m]) b = m - 1;
      else if (cp > this._hi[m]) a = m + 1;
      else return true;
    }
    return false;
  }

  /**
   * Under a Unicode version other than the spec's (policy "refuse"), throw InputError for a text holding a
   * code point unassigned in either version: its tokens could differ from training. Checked on the raw
   * text, code point by code point (astral ones included; a lone surrogate is Cs, never flagged).
   */
  checkUnicode(text, index = 0) {
    if (!this._checkUnicode || isAscii(text)) return;
    const hereAny = UNASSIGNED_HERE.test(text); // one native scan; per code point only when it found one
    for (const ch of text) {
      const cp = ch.codePointAt(0);
      if (cp < 0x80) continue;
      const inSpec = this.unassignedInSpec(cp);
      if (inSpec || (hereAny && UNASSIGNED_HERE.test(ch))) {
        const S = this.specUnicodeVersion;
        const C = this.unicodeVersion;
        const where = inSpec ? `Unicode ${S} (the tokenizer's)` : `this runtime's Unicode ${C ?? "version"}`;
        const here = C === null ? "this runtime does not report its Unicode version (unknown)" : `this runtime has Unicode ${C}`;
        throw new InputError(
          `text #${index} contains ${hex(cp)}, which is unassigned in ${where}; the tokenizer was built with Unicode ${S} ` +
            `and ${here}, so this text's tokens could differ from training; run under a runtime ` +
            `with Unicode ${S}, or pass unicodeMismatch: 'warn' to accept the difference`,
          index,
        );
      }
    }
  }

  /** Steps 2-5: every token of a text, before truncation. Code points, never UTF-16 units. No Unicode check. */
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
    if (typeof text !== "string") throw new InputError(`text #${index} is ${text === null ? "null" : Array.isArray(text) ? "an array" : `a ${typeof text}`}, not a string`, index);
    this.checkUnicode(text, index);
    const tokens = this.tokens(text);
    if (tokens.length === 0) {
      throw new InputError(`text #${index} is empty after normalisation: the model needs at least one token`, index);
    }
    const unk = this.spec.unk_id;
    const kept = tokens.slice(0, this.spec.max_length);
    return { ids: kept.map((t) => this.ids.get(t) ?? unk), truncated: tokens.length > this.spec.max_length };
  }
}
