// The four errors the JavaScript runtime throws on purpose (the same classes as runtime/errors.py).
// Each has `.name` set, so it survives JSON and console output; InputError and ModelOutputError carry
// `.index`, the position of the offending text in the call (null when the call itself is wrong).

/** A bundle is missing, incomplete, altered, of an unknown format, or not the pinned one. */
export class BundleError extends Error {
  constructor(message) {
    super(message);
    this.name = "BundleError";
  }
}

/** tokenizer.json is malformed or not of a supported format_version. */
export class TokenizerError extends Error {
  constructor(message) {
    super(message);
    this.name = "TokenizerError";
  }
}

/** A text (or the call's arguments) cannot be scored; `.index` names the text, null for the call. */
export class InputError extends Error {
  constructor(message, index = null) {
    super(message);
    this.name = "InputError";
    this.index = index ?? null;
  }
}

/** The model answered a text with NaN or ±Infinity logits (damaged weights); `.index` names the text. */
export class ModelOutputError extends Error {
  constructor(message, index = null) {
    super(message);
    this.name = "ModelOutputError";
    this.index = index ?? null;
  }
}
