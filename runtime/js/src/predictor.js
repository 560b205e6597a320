// Text in, label out, on any onnxruntime binding (onnxruntime-node or onnxruntime-web): the part of the
// predictor that does not care where the bundle's bytes come from. node.js and browser.js fetch the
// bytes; everything that decides whether those bytes are a bundle seqship may run is here, so both
// loaders make the same checks:
//   - manifest.json: the bundle digest is the sha256 of its exact bytes (it lists every file's sha256
//     and size, so it pins the whole bundle); it is parsed from the same bytes that were hashed;
//   - every file: size and sha256 as the manifest lists them (done by the loader, which has the bytes);
//   - tokenizer.json: a valid spec of format_version 2 (TokenizerError otherwise);
//   - model.onnx: self-contained (no tensor with external data), no NaN/Inf weights, and its metadata_props name the
//     manifest's labels (same order) and the sha256 of tokenizer.json's exact bytes;
//   - the model runs on the highest token id and answers with finite logits, one per label.
import { BundleError, InputError, ModelOutputError, TokenizerError } from "./errors.js";
import { decodeUtf8, JsonSyntaxError, parseJson } from "./json.js";
import { readModelInfo } from "./onnx_proto.js";
import { Tokenizer } from "./tokenizer.js";

export { BundleError, InputError, ModelOutputError, TokenizerError } from "./errors.js";
export { Tokenizer } from "./tokenizer.js";

export const FORMAT = "seqship.bundle";
export const FORMAT_VERSION = 2;
export const REQUIRED_FILES = ["model.onnx", "tokenizer.json"];
const REQUIRED_KEYS = ["format", "format_version", "labels", "files", "signature"];
const SHA256 = /^[0-9a-f]{64}$/;
const HEX64 = /^[0-9a-fA-F]{64}$/;
const UNICODE_POLICIES = ["refuse", "warn"];

const show = (v) => (v === undefined ? "undefined" : JSON.stringify(v));
// A number JSON wrote as a float ("2.0") reads as 2 in JavaScript; say so rather than print "2".
const showNumber = (o, k, isInteger) => (typeof o[k] === "number" && Number.isInteger(o[k]) && !isInteger(o, k) ? `${o[k]}.0 (a float)` : show(o[k]));
const kind = (v) => (v === null ? "null" : Array.isArray(v) ? "an array" : typeof v);

/** The bundle pin: null when none was given, else the lower-case digest; BundleError when malformed. */
export function checkPin(expectedSha256) {
  if (expectedSha256 === undefined || expectedSha256 === null) return null;
  if (typeof expectedSha256 !== "string" || !HEX64.test(expectedSha256)) {
    const shown = typeof expectedSha256 === "string" ? show(expectedSha256.slice(0, 80)) : kind(expectedSha256);
    throw new BundleError(
      `expectedSha256 is malformed: a bundle pin is the sha256 of its manifest.json, 64 hex characters; got ${shown}`,
    );
  }
  return expectedSha256.toLowerCase();
}

/** Refuse a bundle whose digest (sha256 of manifest.json's bytes) is not the pinned one. */
export function checkDigest(digest, pin, where = "manifest.json") {
  if (pin !== null && digest !== pin) {
    throw new BundleError(
      `${where}: the bundle's digest (sha256 of manifest.json) is ${digest}, but ${pin} was pinned (expectedSha256); ` +
        "this is not the bundle you pinned",
    );
  }
}

/** Check the options object of a loader: unknown names are a TypeError, so are bad values. */
export function checkOptions(options, known, who) {
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new TypeError(`${who}: options must be an object, got ${kind(options)}`);
  }
  if (typeof options.InferenceSession === "function") {
    throw new TypeError(`${who}: the second argument is an options object now; pass onnxruntime as {ort}`);
  }
  const unknown = Object.keys(options).filter((k) => !known.includes(k));
  if (unknown.length) throw new TypeError(`${who}: unknown option(s) ${unknown.join(", ")}; known: ${known.join(", ")}`);
  if (options.unicodeMismatch !== undefined && !UNICODE_POLICIES.includes(options.unicodeMismatch)) {
    throw new TypeError(`${who}: unicodeMismatch must be "refuse" or "warn", got ${show(options.unicodeMismatch)}`);
  }
}

/** Parse manifest.json's bytes (strict UTF-8 and JSON) and check its structure. */
export function parseManifest(bytes, where = "manifest.json") {
  let parsed;
  try {
    parsed = parseJson(decodeUtf8(bytes));
  } catch (e) {
    if (!(e instanceof JsonSyntaxError) && !(e instanceof TypeError)) throw e;
    const why = e instanceof JsonSyntaxError ? e.message : "not UTF-8";
    throw new BundleError(`${where}: not valid JSON (${why}); the bundle is damaged, re-run \`pipeline run package\``);
  }
  checkManifest(parsed.value, where, parsed.isInteger);
  return parsed.value;
}

/** Structural checks of manifest.json, the same ones the Python runtime makes. */
export function checkManifest(m, where = "manifest.json", isInteger = (o, k) => Number.isInteger(o[k])) {
  if (typeof m !== "object" || m === null || Array.isArray(m)) throw new BundleError(`${where}: expected a JSON object`);
  const missing = REQUIRED_KEYS.filter((k) => !Object.hasOwn(m, k));
  if (missing.length) throw new BundleError(`${where}: missing keys ${show(missing)}`);
  if (m.format !== FORMAT) throw new BundleError(`${where}: format is ${show(m.format)}, expected "${FORMAT}"`);
  if (m.format_version === 1 && isInteger(m, "format_version")) {
    throw new BundleError(
      `${where}: format_version 1: this bundle was made by an older seqship (this runtime reads version ${FORMAT_VERSION}); ` +
        "rebuild it with this seqship: `pipeline run export --force`, then `pipeline run all`",
    );
  }
  if (m.format_version !== FORMAT_VERSION || !isInteger(m, "format_version")) {
    throw new BundleError(
      `${where}: format_version ${showNumber(m, "format_version", isInteger)} is not supported by this runtime (reads ${FORMAT_VERSION}); upgrade seqship-runtime to load it`,
    );
  }
  const labels = m.labels;
  if (!Array.isArray(labels) || labels.length === 0 || !labels.every((x) => typeof x === "string") || new Set(labels).size !== labels.length) {
    throw new BundleError(`${where}: 'labels' must be a non-empty list of distinct strings`);
  }
  const files = m.files;
  if (typeof files !== "object" || files === null || Array.isArray(files)) {
    throw new BundleError(`${where}: 'files' must map file names to {sha256, bytes}`);
  }
  for (const name of REQUIRED_FILES) {
    if (!Object.hasOwn(files, name)) throw new BundleError(`${where}: 'files' does not list the required file ${name}`);
  }
  for (const [name, entry] of Object.entries(files)) {
    if (!name || name.startsWith("/") || name.includes("\\") || name.includes("\0") || name.split("/").includes("..")) {
      throw new BundleError(`${where}: file ${show(name)} points outside the bundle folder; refusing to load it`);
    }
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
      throw new BundleError(`${where}: entry for ${show(name)} must be an object {sha256, bytes}`);
    }
    if (typeof entry.sha256 !== "string" || !SHA256.test(entry.sha256)) {
      throw new BundleError(`${where}: entry for ${show(name)} lacks a sha256 (64 lower-case hex characters), got ${show(entry.sha256)}`);
    }
    if (!isInteger(entry, "bytes") || entry.bytes < 0) {
      throw new BundleError(`${where}: entry for ${show(name)} must give its size as a non-negative integer 'bytes', got ${showNumber(entry, "bytes", isInteger)}`);
    }
  }
}

function firstLine(e) {
  return String(e && e.message !== undefined ? e.message : e).split("\n")[0].slice(0, 200);
}

/**
 * Everything after the bytes are in hand and match the manifest: returns a checked Predictor.
 * `where` names the three files in messages (paths or URLs).
 */
export async function buildPredictor({
  ort, manifest, digest, modelBytes, tokenizerBytes, tokenizerSha256, sessionOptions, provider,
  unicodeMismatch = "refuse", where = {},
}) {
  const w = { manifest: "manifest.json", model: "model.onnx", tokenizer: "tokenizer.json", ...where };
  // The order of runtime/predictor.py's Predictor.load, so that both runtimes name the same first problem.
  const info = readModelInfo(modelBytes);
  if (info.external.length) {
    const { tensor, location } = info.external[0];
    throw new BundleError(
      `${w.model} references external data file ${location ? show(location) : "(no location given)"} for tensor ${show(tensor)}; ` +
        "seqship bundles must be self-contained (weights inside model.onnx): re-export the model",
    );
  }
  if (info.nonfinite.length) {
    throw new BundleError(
      `${w.model}: weights ${show(info.nonfinite.slice(0, 3))} hold non-finite values (NaN or Inf); the model is damaged ` +
        "(onnxruntime would turn them into finite but meaningless scores): re-export it",
    );
  }
  const tokenizer = Tokenizer.fromJson(tokenizerBytes, { unicodeMismatch, source: w.tokenizer });
  const meta = info.metadata;
  for (const key of ["seqship.labels", "seqship.tokenizer_sha256"]) {
    if (!Object.hasOwn(meta, key)) {
      throw new BundleError(
        `${w.model} carries no ${key} metadata; it was not exported by this version of seqship (or was edited), ` +
          "so its labels and tokenizer cannot be checked: rebuild it with this seqship: `pipeline run export --force`, then `pipeline run all`",
      );
    }
  }
  let modelLabels;
  try {
    modelLabels = JSON.parse(meta["seqship.labels"]);
  } catch {
    modelLabels = null;
  }
  if (!Array.isArray(modelLabels) || !modelLabels.every((x) => typeof x === "string")) {
    throw new BundleError(`${w.model}: metadata seqship.labels is not a JSON list of strings; re-export the model`);
  }
  const labels = manifest.labels;
  if (modelLabels.length !== labels.length || modelLabels.some((x, i) => x !== labels[i])) {
    throw new BundleError(
      `${w.model} was exported with labels ${show(modelLabels.slice(0, 4))}... (${modelLabels.length}), the manifest lists ` +
        `${show(labels.slice(0, 4))}... (${labels.length}); labels and model disagree (order matters)`,
    );
  }
  const boundSha = meta["seqship.tokenizer_sha256"];
  if (boundSha !== tokenizerSha256) {
    throw new BundleError(
      `${w.tokenizer} is not the tokenizer ${w.model} was exported with: its sha256 is ${tokenizerSha256}, the model's ` +
        `metadata seqship.tokenizer_sha256 says ${show(boundSha)}; tokenizer and model disagree`,
    );
  }
  const vocab = manifest.signature && manifest.signature.vocab_size;
  if (vocab !== undefined && vocab !== null && vocab !== tokenizer.vocabSize) {
    throw new BundleError(
      `${w.tokenizer}: vocabulary of ${tokenizer.vocabSize} tokens, but the model's embedding has ${vocab} rows ` +
        "(manifest signature.vocab_size); tokenizer and model disagree",
    );
  }
  let session;
  try {
    // onnxruntime logs a refused input (the embedding probe below) as an error on stderr before it
    // throws; the exception says the same, so its own log stays quiet below "fatal" unless asked for.
    session = await ort.InferenceSession.create(modelBytes, { logSeverityLevel: 3, ...sessionOptions });
  } catch (e) {
    throw new BundleError(`${w.model}: onnxruntime could not load it (${firstLine(e)})`);
  }
  const inputs = [...session.inputNames].sort();
  if (inputs.join(",") !== "lengths,token_ids" || session.outputNames.join(",") !== "logits") {
    throw new BundleError(
      `${w.model}: graph inputs ${show(session.inputNames)} / outputs ${show(session.outputNames)} do not follow ` +
        'the model contract ["token_ids", "lengths"] -> ["logits"]',
    );
  }
  const predictor = new Predictor(ort, session, tokenizer, manifest, provider, { digest });
  await predictor._checkEmbedding(w);
  return predictor;
}

function softmax(row) {
  let top = -Infinity;
  for (const v of row) top = Math.max(top, v);
  const e = Array.from(row, (v) => Math.exp(v - top));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / total);
}

function allFinite(row) {
  for (const v of row) if (!Number.isFinite(v)) return false;
  return true;
}

function checkTexts(texts) {
  if (typeof texts === "string") throw new InputError("pass an array of texts, not a single string: use predict([text])");
  if (!Array.isArray(texts)) throw new InputError(`texts must be an array of strings, got ${kind(texts)}`);
}

function nonFinite(index) {
  return new ModelOutputError(
    `text #${index}: the model produced non-finite logits (NaN/Inf); its weights are damaged (or overflow on this ` +
      "input): re-export the model, and do not trust its other answers",
    index,
  );
}

export class Predictor {
  /** Use load() (node.js) or loadFromUrl() (browser.js); this constructor trusts what it is given. */
  constructor(ort, session, tokenizer, manifest, provider, { digest = null } = {}) {
    this.ort = ort;
    this.session = session;
    this.tokenizer = tokenizer instanceof Tokenizer ? tokenizer : new Tokenizer(tokenizer);
    this.manifest = manifest;
    this.labels = manifest.labels;
    this.provider = provider;
    this.digest = digest; // sha256 of manifest.json's bytes: pass it as expectedSha256 to pin this bundle
    this.batchSize = 128;
    const vocab = manifest.signature && manifest.signature.vocab_size;
    if (vocab !== undefined && vocab !== null && vocab !== this.tokenizer.vocabSize) {
      throw new BundleError(`tokenizer.json: ${this.tokenizer.vocabSize} tokens, the model's embedding has ${vocab}; tokenizer and model disagree`);
    }
  }

  /** Run the model once on the highest token id, three times over (so the recurrent weights act on a
   * non-zero state): it must index the embedding and give finite logits. Same probe as Python's. */
  async _checkEmbedding(w = { model: "model.onnx", tokenizer: "tokenizer.json" }) {
    const top = this.tokenizer.vocabSize - 1;
    let out;
    try {
      out = await this.session.run(
        {
          token_ids: new this.ort.Tensor("int64", BigInt64Array.from([BigInt(top), BigInt(top), BigInt(top)]), [1, 3]),
          lengths: new this.ort.Tensor("int64", BigInt64Array.from([3n]), [1]),
        },
        { logSeverityLevel: 4 },
      );
    } catch (e) {
      throw new BundleError(
        `${w.tokenizer}: token id ${top} (the vocabulary has ${top + 1} entries) is outside the model's embedding ` +
          `(${firstLine(e)}); tokenizer and model disagree`,
      );
    }
    const logits = out.logits;
    const dims = Array.from(logits.dims, Number);
    if (dims.length !== 2 || dims[0] !== 1 || dims[1] !== this.labels.length) {
      throw new BundleError(
        `${w.model}: the model outputs logits of shape ${show(dims)} for one text, but the manifest lists ` +
          `${this.labels.length} labels; labels and model come from different runs`,
      );
    }
    if (!allFinite(logits.data)) {
      throw new BundleError(
        `${w.model} produces non-finite logits (NaN or Inf weights?) on a three-token probe; the model is damaged: re-export it`,
      );
    }
  }

  /** Logits [rows][labels] for right-padded token ids: the model contract, for probes and other front ends. */
  async logitsFromIds(rows) {
    const B = rows.length;
    const T = Math.max(...rows.map((r) => r.length));
    if (B === 0 || T === 0 || rows.some((r) => r.length === 0)) throw new InputError("every row needs at least one token");
    const ids = new BigInt64Array(B * T).fill(BigInt(this.tokenizer.spec.pad_id));
    rows.forEach((r, b) => r.forEach((id, t) => (ids[b * T + t] = BigInt(id))));
    const lengths = BigInt64Array.from(rows, (r) => BigInt(r.length));
    const out = await this.session.run({
      token_ids: new this.ort.Tensor("int64", ids, [B, T]),
      lengths: new this.ort.Tensor("int64", lengths, [B]),
    });
    const C = this.labels.length;
    const dims = Array.from(out.logits.dims, Number);
    if (dims.length !== 2 || dims[0] !== B || dims[1] !== C) {
      throw new ModelOutputError(
        `model.onnx returned logits of shape [${dims.join(", ")}] for a batch of ${B} texts; expected [${B}, ${C}]: ` +
          "the model and its labels disagree",
        null,
      );
    }
    const data = out.logits.data;
    return rows.map((_, b) => Array.from(data.subarray(b * C, (b + 1) * C)));
  }

  /**
   * Encode and score: {encoded, failed, rows} in input order. Texts are batched by length. With
   * errors "raise" the first bad text (in input order) throws; with "return" its error is kept in
   * `failed` (index -> error) and its row is null.
   */
  async _score(texts, errors) {
    const failed = new Map();
    const encoded = texts.map((t, i) => {
      try {
        return this.tokenizer.encode(t, i);
      } catch (e) {
        if (errors === "raise" || !(e instanceof InputError)) throw e;
        failed.set(i, e);
        return null;
      }
    });
    const good = encoded.map((_, i) => i).filter((i) => encoded[i] !== null);
    const order = good.sort((a, b) => encoded[a].ids.length - encoded[b].ids.length);
    const rows = new Array(texts.length).fill(null);
    for (let s = 0; s < order.length; s += this.batchSize) {
      const idx = order.slice(s, s + this.batchSize);
      const out = await this.logitsFromIds(idx.map((i) => encoded[i].ids));
      idx.forEach((i, r) => (rows[i] = out[r]));
    }
    for (let i = 0; i < rows.length; i++) {
      if (rows[i] === null || allFinite(rows[i])) continue;
      if (errors === "raise") throw nonFinite(i);
      failed.set(i, nonFinite(i));
      rows[i] = null;
    }
    return { encoded, failed, rows };
  }

  /** Logits [texts][labels]; texts are batched by length, results come back in input order. */
  async logits(texts) {
    checkTexts(texts);
    return (await this._score(texts, "raise")).rows;
  }

  /**
   * One result per text: {label, score, topK: [{label, score}], numTokens, truncated, provider}.
   * `topK`: an integer from 1 to labels.length. Option `errors`: "raise" (default) throws the first bad
   * text's InputError / ModelOutputError; "return" puts that error object in the text's place.
   */
  async predict(texts, topK = 1, { errors = "raise", ...rest } = {}) {
    if (Object.keys(rest).length) throw new TypeError(`predict: unknown option(s) ${Object.keys(rest).join(", ")}; known: errors`);
    if (errors !== "raise" && errors !== "return") throw new TypeError(`predict: errors must be "raise" or "return", got ${show(errors)}`);
    checkTexts(texts);
    const L = this.labels.length;
    if (!Number.isInteger(topK) || topK < 1 || topK > L) {
      throw new InputError(`topK must be an integer from 1 to ${L} (the number of labels), got ${typeof topK === "number" ? topK : show(topK)}`);
    }
    const { encoded, failed, rows } = await this._score(texts, errors);
    return rows.map((row, i) => {
      if (failed.has(i)) return failed.get(i);
      const probs = softmax(row);
      const order = probs.map((_, j) => j).sort((a, b) => probs[b] - probs[a] || a - b).slice(0, topK);
      return {
        label: this.labels[order[0]],
        score: probs[order[0]],
        topK: order.map((j) => ({ label: this.labels[j], score: probs[j] })),
        numTokens: encoded[i].ids.length,
        truncated: encoded[i].truncated,
        provider: this.provider,
      };
    });
  }
}
