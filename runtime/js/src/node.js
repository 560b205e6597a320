// Node.js: load a bundle folder with onnxruntime-node, checking every file against the manifest.
import { createHash } from "node:crypto";
import { readFile, realpath, stat } from "node:fs/promises";
import path from "node:path";
import * as ort from "onnxruntime-node";

import { BundleError, checkManifest, Predictor } from "./predictor.js";

export { BundleError, Predictor } from "./predictor.js";
export { InputError, Tokenizer } from "./tokenizer.js";

async function readChecked(root, realRoot, name, entry) {
  const file = path.join(root, name);
  let real;
  try {
    real = await realpath(file);
  } catch {
    throw new BundleError(`${file}: listed in the manifest but missing; copy the whole bundle folder`);
  }
  if (real !== realRoot && !real.startsWith(realRoot + path.sep)) {
    throw new BundleError(`${file}: resolves outside the bundle folder (a symlink?); refusing to load it`);
  }
  const size = (await stat(real)).size;
  if (typeof entry.bytes === "number" && size !== entry.bytes) {
    throw new BundleError(`${file}: ${size} bytes, the manifest says ${entry.bytes} (truncated or replaced)`);
  }
  const bytes = await readFile(real);
  const digest = createHash("sha256").update(bytes).digest("hex");
  if (digest !== entry.sha256) throw new BundleError(`${file}: sha256 does not match the manifest; the file was altered after packaging`);
  return bytes;
}

/** Predictor.load for Node: `const p = await load(dir); await p.predict(["Nguyen"], 3)`. */
export async function load(dir, { executionProviders = ["cpu"] } = {}) {
  const root = path.resolve(dir);
  let manifest;
  try {
    manifest = JSON.parse(await readFile(path.join(root, "manifest.json"), "utf8"));
  } catch (e) {
    throw new BundleError(`${path.join(root, "manifest.json")}: ${e.code === "ENOENT" ? "missing; this folder is not a seqship bundle" : "not valid JSON"}`);
  }
  checkManifest(manifest, path.join(root, "manifest.json"));
  const realRoot = await realpath(root);
  const files = {};
  for (const [name, entry] of Object.entries(manifest.files)) files[name] = await readChecked(root, realRoot, name, entry);
  const session = await ort.InferenceSession.create(files["model.onnx"], { executionProviders });
  const tokenizer = JSON.parse(files["tokenizer.json"].toString("utf8"));
  return new Predictor(ort, session, tokenizer, manifest, executionProviders[0]);
}

Predictor.load = load;
