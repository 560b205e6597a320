// A strict JSON parser (RFC 8259, what JSON.parse accepts) that also remembers which object members
// were written as non-integer number literals ("16.0", "1e3"). JSON.parse turns 16.0 into 16, so it
// cannot tell that Python's json module would read a float there; seqship's Python runtime refuses a
// float where an integer is required (max_length, pad_id, a file's bytes), and so must this one.

export class JsonSyntaxError extends Error {
  constructor(message) {
    super(message);
    this.name = "JsonSyntaxError";
  }
}

// The limits every bundle JSON reader applies (runtime/bundle.py, runtime/cpp/bundle_check.h, this one), so
// that a document is read the same way, or refused, in every language: arrays and objects nested at most
// this deep, integers within what a double holds exactly, no number that overflows a double.
export const MAX_JSON_DEPTH = 512;

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);
const ESCAPES = { 0x22: '"', 0x5c: "\\", 0x2f: "/", 0x62: "\b", 0x66: "\f", 0x6e: "\n", 0x72: "\r", 0x74: "\t" };
const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;

/**
 * Parse `text`; returns {value, isInteger(obj, key)} where isInteger tells whether obj[key] is a number
 * written as an integer literal (no fraction, no exponent). Throws JsonSyntaxError.
 */
export function parseJson(text) {
  const floats = new WeakMap(); // object -> Set of member names whose number literal was not an integer
  let i = 0;
  const fail = (what) => {
    throw new JsonSyntaxError(`${what} at character ${i}`);
  };
  const skip = () => {
    while (i < text.length && WS.has(text.charCodeAt(i))) i++;
  };

  function string() {
    i++; // the opening quote
    let out = "";
    let start = i;
    for (;;) {
      if (i >= text.length) fail("unterminated string");
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        out += text.slice(start, i);
        i++;
        return out;
      }
      if (c < 0x20) fail("control character in a string");
      if (c !== 0x5c) {
        i++;
        continue;
      }
      out += text.slice(start, i);
      const e = text.charCodeAt(i + 1);
      if (e === 0x75) {
        const hex = text.slice(i + 2, i + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail("bad \\u escape");
        out += String.fromCharCode(parseInt(hex, 16));
        i += 6;
      } else if (e in ESCAPES) {
        out += ESCAPES[e];
        i += 2;
      } else {
        fail("bad escape");
      }
      start = i;
    }
  }

  // depth: the arrays and objects that enclose this value
  function value(depth) {
    skip();
    const c = text.charCodeAt(i);
    if (c === 0x22) return { v: string(), int: false };
    if ((c === 0x7b || c === 0x5b) && depth >= MAX_JSON_DEPTH) fail(`arrays and objects nested deeper than ${MAX_JSON_DEPTH}`);
    if (c === 0x7b) {
      i++;
      const obj = {};
      let nonInt = null;
      skip();
      if (text.charCodeAt(i) === 0x7d) {
        i++;
        return { v: obj, int: false };
      }
      for (;;) {
        skip();
        if (text.charCodeAt(i) !== 0x22) fail("expected a member name");
        const key = string();
        skip();
        if (text.charCodeAt(i) !== 0x3a) fail("expected ':'");
        i++;
        const m = value(depth + 1);
        // defineProperty, as JSON.parse does: a member named "__proto__" stays a plain member
        Object.defineProperty(obj, key, { value: m.v, writable: true, enumerable: true, configurable: true });
        if (typeof m.v === "number" && !m.int) (nonInt ??= new Set()).add(key);
        else nonInt?.delete(key);
        skip();
        const d = text.charCodeAt(i++);
        if (d === 0x7d) break;
        if (d !== 0x2c) (i--, fail("expected ',' or '}'"));
      }
      if (nonInt) floats.set(obj, nonInt);
      return { v: obj, int: false };
    }
    if (c === 0x5b) {
      i++;
      const arr = [];
      skip();
      if (text.charCodeAt(i) === 0x5d) {
        i++;
        return { v: arr, int: false };
      }
      for (;;) {
        arr.push(value(depth + 1).v);
        skip();
        const d = text.charCodeAt(i++);
        if (d === 0x5d) break;
        if (d !== 0x2c) (i--, fail("expected ',' or ']'"));
      }
      return { v: arr, int: false };
    }
    for (const [word, v] of [["true", true], ["false", false], ["null", null]]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return { v, int: false };
      }
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) fail("unexpected character");
    const v = Number(m[0]);
    const int = m[1] === undefined && m[2] === undefined;
    if (int && !Number.isSafeInteger(v)) {
      fail(`the integer ${m[0].slice(0, 40)} is outside +-${Number.MAX_SAFE_INTEGER} (what JavaScript reads exactly)`);
    }
    if (!Number.isFinite(v)) fail("a number too large for a double");
    i += m[0].length;
    return { v, int };
  }

  const top = value(0);
  skip();
  if (i !== text.length) fail("unexpected data after the JSON value");
  return {
    value: top.v,
    isInteger: (obj, key) =>
      typeof obj?.[key] === "number" && Number.isInteger(obj[key]) && !(floats.get(obj)?.has(key) ?? false),
  };
}

/** Strict UTF-8 (no BOM stripping, as Python's bytes.decode("utf-8")); throws TypeError on bad bytes. */
export function decodeUtf8(bytes) {
  return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
}
