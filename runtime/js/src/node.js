// Node.js: load a bundle folder with onnxruntime-node. Every file is read once; its size and sha256 are
// checked against the manifest and the checked bytes are what is used (never re-read from disk).
import { createHash } from "node:crypto";
import { readFile, realpath, stat } from "node:fs/promises";
import path from "node:path";
import * as ort from "onnxruntime-node";

import { BundleError, buildPredictor, checkDigest, checkOptions, checkPin, parseManifest, Predictor } from "./predictor.js";

export { BundleError, InputError, ModelOutputError, TokenizerError } from "./errors.js";
export { Predictor } from "./predictor.js";
export { Tokenizer } from "./tokenizer.js";

const OPTIONS = ["executionProviders", "expectedSha256", "unicodeMismatch"];

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

async function readChecked(root, realRoot, name, entry) {
  const file = path.join(root, name);
  let real;
  try {
    real = await realpath(file);
  } catch {
    throw new BundleError(`${file}: listed in the manifest but missing; copy the whole bundle folder`);
  }
  if (real !== realRoot && !real.startsWith(realRoot + path.sep)) {
    throw new BundleError(`${file}: resolves to ${real}, outside the bundle folder (a symlink?); refusing to load it`);
  }
  const info = await stat(real);
  if (!info.isFile()) throw new BundleError(`${file}: not a regular file; copy the whole bundle folder`);
  if (info.size !== entry.bytes) {
    throw new BundleError(`${file}: ${info.size} bytes, the manifest says ${entry.bytes} (truncated or replaced); copy the bundle again`);
  }
  const bytes = await readFile(real);
  if (bytes.length !== entry.bytes) {
    throw new BundleError(`${file}: ${bytes.length} bytes, the manifest says ${entry.bytes} (changed while loading); copy the bundle again`);
  }
  const digest = sha256(bytes);
  if (digest !== entry.sha256) {
    throw new BundleError(
      `${file}: sha256 does not match the manifest (${digest.slice(0, 12)}…, the manifest says ${entry.sha256.slice(0, 12)}…); ` +
        "the file was altered after packaging, copy the bundle again",
    );
  }
  return { bytes, digest };
}

/**
 * Predictor.load for Node: `const p = await load(dir); await p.predict(["Nguyen"], 3)`.
 * Options: executionProviders (default ["cpu"]); expectedSha256, the bundle digest to insist on (the
 * sha256 of manifest.json, as `p.digest` reports it); unicodeMismatch, "refuse" (default) or "warn" (see
 * tokenizer.js).
 */
export async function load(dir, options = {}) {
  checkOptions(options, OPTIONS, "load");
  const { executionProviders = ["cpu"], expectedSha256, unicodeMismatch = "refuse" } = options;
  if (!Array.isArray(executionProviders) || executionProviders.length === 0) {
    throw new TypeError(`load: executionProviders must be a non-empty array, got ${JSON.stringify(executionProviders)}`);
  }
  const pin = checkPin(expectedSha256);
  const root = path.resolve(String(dir));
  const manifestPath = path.join(root, "manifest.json");
  let realRoot;
  try {
    realRoot = await realpath(root);
  } catch {
    throw new BundleError(`${root}: bundle folder not found; pass the folder that holds manifest.json`);
  }
  let manifestBytes;
  try {
    manifestBytes = await readFile(manifestPath);
  } catch (e) {
    throw new BundleError(`${manifestPath}: ${e.code === "ENOENT" ? "missing; this folder is not a seqship bundle" : `cannot be read (${e.code})`}`);
  }
  const digest = sha256(manifestBytes);
  checkDigest(digest, pin, manifestPath);
  const manifest = parseManifest(manifestBytes, manifestPath);
  const files = {};
  for (const [name, entry] of Object.entries(manifest.files)) files[name] = await readChecked(root, realRoot, name, entry);
  return buildPredictor({
    ort,
    manifest,
    digest,
    modelBytes: files["model.onnx"].bytes,
    tokenizerBytes: files["tokenizer.json"].bytes,
    tokenizerSha256: files["tokenizer.json"].digest,
    sessionOptions: { executionProviders },
    provider: executionProviders[0],
    unicodeMismatch,
    where: { manifest: manifestPath, model: path.join(root, "model.onnx"), tokenizer: path.join(root, "tokenizer.json") },
  });
}

Predictor.load = load;
