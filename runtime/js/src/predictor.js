// Text in, label out, on any onnxruntime binding (onnxruntime-node or onnxruntime-web): the part of the
// predictor that does not care where the bundle's bytes come from. node.js and browser.js load bundles.
import { Tokenizer } from "./tokenizer.js";

export class BundleError extends Error {
  constructor(message) {
    super(message);
    this.name = "BundleError";
  }
}

export const REQUIRED_FILES = ["model.onnx", "tokenizer.json"];

/** Structural checks of manifest.json, the same ones the Python runtime makes. */
export function checkManifest(m, where = "manifest.json") {
  if (typeof m !== "object" || m === null) throw new BundleError(`${where}: expected a JSON object`);
  for (const k of ["format", "format_version", "labels", "files", "signature"]) {
    if (!(k in m)) throw new BundleError(`${where}: missing key ${k}`);
  }
  if (m.format !== "seqship.bundle") throw new BundleError(`${where}: format is ${m.format}, expected seqship.bundle`);
  if (m.format_version !== 1) throw new BundleError(`${where}: format_version ${m.format_version} is not supported; upgrade seqship-runtime`);
  if (!Array.isArray(m.labels) || m.labels.length === 0) throw new BundleError(`${where}: labels must be a non-empty list`);
  for (const name of REQUIRED_FILES) {
    if (!(name in m.files)) throw new BundleError(`${where}: files does not list the required file ${name}`);
  }
  for (const name of Object.keys(m.files)) {
    if (!name || name.startsWith("/") || name.includes("\\") || name.split("/").includes("..")) {
      throw new BundleError(`${where}: file ${name} points outside the bundle folder; refusing to load it`);
    }
  }
}

function softmax(row) {
  let top = -Infinity;
  for (const v of row) top = Math.max(top, v);
  const e = Array.from(row, (v) => Math.exp(v - top));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / total);
}

export class Predictor {
  constructor(ort, session, tokenizerSpec, manifest, provider) {
    this.ort = ort;
    this.session = session;
    this.tokenizer = new Tokenizer(tokenizerSpec);
    this.manifest = manifest;
    this.labels = manifest.labels;
    this.provider = provider;
    this.batchSize = 128;
    const vocab = manifest.signature && manifest.signature.vocab_size;
    if (vocab !== undefined && vocab !== this.tokenizer.vocabSize) {
      throw new BundleError(`tokenizer.json: ${this.tokenizer.vocabSize} tokens, the model's embedding has ${vocab}; tokenizer and model disagree`);
    }
  }

  /** Logits [rows][labels] for right-padded token ids: the model contract, for probes and other front ends. */
  async logitsFromIds(rows) {
    const B = rows.length;
    const T = Math.max(...rows.map((r) => r.length));
    if (B === 0 || T === 0 || rows.some((r) => r.length === 0)) throw new Error("every row needs at least one token");
    const ids = new BigInt64Array(B * T).fill(BigInt(this.tokenizer.spec.pad_id));
    rows.forEach((r, b) => r.forEach((id, t) => (ids[b * T + t] = BigInt(id))));
    const lengths = BigInt64Array.from(rows, (r) => BigInt(r.length));
    const out = await this.session.run({
      token_ids: new this.ort.Tensor("int64", ids, [B, T]),
      lengths: new this.ort.Tensor("int64", lengths, [B]),
    });
    const data = out.logits.data;
    const C = this.labels.length;
    return rows.map((_, b) => Array.from(data.subarray(b * C, (b + 1) * C)));
  }

  /** Logits [texts][labels]; texts are batched by length, results come back in input order. */
  async logits(texts) {
    const encoded = texts.map((t, i) => this.tokenizer.encode(t, i));
    const order = encoded.map((_, i) => i).sort((a, b) => encoded[a].ids.length - encoded[b].ids.length);
    const result = new Array(texts.length);
    for (let s = 0; s < order.length; s += this.batchSize) {
      const idx = order.slice(s, s + this.batchSize);
      const rows = await this.logitsFromIds(idx.map((i) => encoded[i].ids));
      idx.forEach((i, r) => (result[i] = rows[r]));
    }
    return result;
  }

  /** One result per text: {label, score, topK: [{label, score}], numTokens, truncated, provider}. */
  async predict(texts, topK = 1) {
    const all = await this.logits(texts);
    return all.map((row, i) => {
      const probs = softmax(row);
      const order = probs.map((_, j) => j).sort((a, b) => probs[b] - probs[a] || a - b).slice(0, topK);
      const enc = this.tokenizer.encode(texts[i], i);
      return {
        label: this.labels[order[0]],
        score: probs[order[0]],
        topK: order.map((j) => ({ label: this.labels[j], score: probs[j] })),
        numTokens: enc.ids.length,
        truncated: enc.truncated,
        provider: this.provider,
      };
    });
  }
}
