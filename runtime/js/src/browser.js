// Web browser: load a bundle served over HTTP with onnxruntime-web (WebAssembly), checking every file's
// sha256 against the manifest (crypto.subtle needs a secure context: https or localhost).
import { BundleError, checkManifest, Predictor } from "./predictor.js";

export { BundleError, Predictor } from "./predictor.js";
export { InputError, Tokenizer } from "./tokenizer.js";

async function sha256(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new BundleError(`${url}: HTTP ${r.status}; serve the whole bundle folder`);
  return new Uint8Array(await r.arrayBuffer());
}

/** Load the bundle at `baseUrl` (ending in "/") with the global `ort` of onnxruntime-web, or the one given. */
export async function loadFromUrl(baseUrl, ort = globalThis.ort) {
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(await fetchBytes(baseUrl + "manifest.json")));
  } catch (e) {
    throw e instanceof BundleError ? e : new BundleError(`${baseUrl}manifest.json: not valid JSON`);
  }
  checkManifest(manifest, baseUrl + "manifest.json");
  const files = {};
  for (const name of ["model.onnx", "tokenizer.json"]) {
    const bytes = await fetchBytes(baseUrl + name);
    const entry = manifest.files[name];
    if (bytes.length !== entry.bytes || (await sha256(bytes)) !== entry.sha256) {
      throw new BundleError(`${baseUrl}${name}: does not match the manifest's sha256; the file was altered or truncated`);
    }
    files[name] = bytes;
  }
  const session = await ort.InferenceSession.create(files["model.onnx"], { executionProviders: ["wasm"] });
  const tokenizer = JSON.parse(new TextDecoder().decode(files["tokenizer.json"]));
  return new Predictor(ort, session, tokenizer, manifest, "wasm");
}
