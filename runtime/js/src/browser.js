// Web browser: load a bundle served over HTTP with onnxruntime-web (WebAssembly), with the checks of the
// Node loader: manifest.json fetched once (its sha256 is the bundle digest, checked against
// expectedSha256 when given) and parsed from those bytes; every listed file checked against the
// manifest's sizes and sha256 (crypto.subtle needs a secure context: https or localhost); the model's
// metadata, external data and tokenizer spec checked as in predictor.js.
import { BundleError, buildPredictor, checkDigest, checkOptions, checkPin, parseManifest } from "./predictor.js";

export { BundleError, InputError, ModelOutputError, TokenizerError } from "./errors.js";
export { Predictor } from "./predictor.js";
export { Tokenizer } from "./tokenizer.js";

const OPTIONS = ["ort", "expectedSha256", "unicodeMismatch"];

async function sha256(bytes) {
  if (!globalThis.crypto || !globalThis.crypto.subtle) {
    throw new BundleError("crypto.subtle is unavailable (the page is not a secure context: serve it over https or from localhost); the bundle cannot be checked");
  }
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function fetchBytes(url) {
  let r;
  try {
    r = await fetch(url);
  } catch (e) {
    throw new BundleError(`${url}: could not be fetched (${e.message}); serve the whole bundle folder`);
  }
  if (!r.ok) throw new BundleError(`${url}: HTTP ${r.status}; serve the whole bundle folder`);
  return new Uint8Array(await r.arrayBuffer());
}

/**
 * Load the bundle at `baseUrl` (ending in "/"). Options: ort (default: the global `ort` of
 * onnxruntime-web); expectedSha256, the bundle digest to insist on (`p.digest` reports it);
 * unicodeMismatch, "refuse" (default) or "warn". A browser does not report its Unicode version, so
 * under "refuse" every text is checked for code points unassigned in the tokenizer's Unicode version
 * or in the browser's.
 */
export async function loadFromUrl(baseUrl, options = {}) {
  checkOptions(options, OPTIONS, "loadFromUrl");
  const { ort = globalThis.ort, expectedSha256, unicodeMismatch = "refuse" } = options;
  if (!ort || !ort.InferenceSession) throw new TypeError("loadFromUrl: no onnxruntime-web: load ort.min.js first, or pass {ort}");
  const pin = checkPin(expectedSha256);
  const base = String(baseUrl).endsWith("/") ? String(baseUrl) : `${baseUrl}/`;
  const manifestUrl = base + "manifest.json";
  const manifestBytes = await fetchBytes(manifestUrl);
  const digest = await sha256(manifestBytes);
  checkDigest(digest, pin, manifestUrl);
  const manifest = parseManifest(manifestBytes, manifestUrl);
  // Every listed file, as Python and Node check them (a bundle loads only when whole and unaltered), fetched
  // in parallel; only model.onnx and tokenizer.json are kept, and those are used from the bytes hashed here.
  const files = {};
  await Promise.all(
    Object.entries(manifest.files).map(async ([name, entry]) => {
      const url = base + name.split("/").map(encodeURIComponent).join("/");
      const bytes = await fetchBytes(url);
      if (bytes.length !== entry.bytes) {
        throw new BundleError(`${url}: ${bytes.length} bytes, the manifest says ${entry.bytes} (truncated or replaced)`);
      }
      const hash = await sha256(bytes);
      if (hash !== entry.sha256) {
        throw new BundleError(
          `${url}: sha256 does not match the manifest (${hash.slice(0, 12)}…, the manifest says ${entry.sha256.slice(0, 12)}…); ` +
            "the file was altered after packaging, copy the bundle again",
        );
      }
      if (name === "model.onnx" || name === "tokenizer.json") files[name] = { bytes, hash };
    }),
  );
  return buildPredictor({
    ort,
    manifest,
    digest,
    modelBytes: files["model.onnx"].bytes,
    tokenizerBytes: files["tokenizer.json"].bytes,
    tokenizerSha256: files["tokenizer.json"].hash,
    sessionOptions: { executionProviders: ["wasm"] },
    provider: "wasm",
    unicodeMismatch,
    where: { manifest: manifestUrl, model: base + "model.onnx", tokenizer: base + "tokenizer.json" },
  });
}
