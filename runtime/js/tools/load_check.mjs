// Loads a bundle with the Node predictor and prints ONE JSON line to stdout, for the Python tests:
//   success:       {"ok": true, "digest": "...", "labels": [...], "predictions": [...]}
//   load failure:  {"ok": false, "error": {"name", "message"}}
// predictions: predict(texts, K) with K = min(3, labels.length) (or --top-k), one entry per text: the
// result object, or {"error": {"name", "message", "index"}} for a text that cannot be scored. When the
// call itself is refused (texts not an array, a bad --top-k), "predictions" is absent and
// "predict_error": {"name", "message", "index"} says why.
// Exit code 0 for all of these; 2 for bad arguments; 1 for an error that is none of seqship's four
// (BundleError, TokenizerError, InputError, ModelOutputError): a bug, printed the same way.
// usage: node tools/load_check.mjs BUNDLE_DIR [--expect-sha256 HEX] [--unicode-mismatch refuse|warn]
//                                  [--texts JSON_FILE] [--top-k JSON_VALUE]
//   BUNDLE_DIR may be an http(s) URL: then the browser loader (src/browser.js: fetch, crypto.subtle) loads it
//   with onnxruntime-web's WebAssembly build, as a page would.
//   JSON_FILE holds the texts as a JSON value (normally an array of strings; anything else is passed
//   to predict as is).
import { readFile } from "node:fs/promises";
import { webcrypto } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { loadFromUrl } from "../src/browser.js";
import { load } from "../src/node.js";

const USAGE =
  "usage: node tools/load_check.mjs BUNDLE_DIR [--expect-sha256 HEX] [--unicode-mismatch refuse|warn] [--texts JSON_FILE] [--top-k JSON_VALUE]\n";
const OURS = new Set(["BundleError", "TokenizerError", "InputError", "ModelOutputError"]);

function usage(why) {
  process.stderr.write(`load_check: ${why}\n${USAGE}`);
  process.exit(2);
}

const args = process.argv.slice(2);
const opts = {};
let bundle;
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (["--expect-sha256", "--unicode-mismatch", "--texts", "--top-k"].includes(a)) {
    if (i + 1 >= args.length) usage(`${a} needs a value`);
    opts[a] = args[++i];
  } else if (a.startsWith("--")) {
    usage(`unknown option ${a}`);
  } else if (bundle === undefined) {
    bundle = a;
  } else {
    usage(`unexpected argument ${a}`);
  }
}
if (bundle === undefined) usage("BUNDLE_DIR is required");
const policy = opts["--unicode-mismatch"] ?? "refuse";
if (!["refuse", "warn"].includes(policy)) usage("--unicode-mismatch must be refuse or warn");
let texts = [];
if (opts["--texts"] !== undefined) {
  try {
    texts = JSON.parse(await readFile(opts["--texts"], "utf8"));
  } catch (e) {
    usage(`--texts ${opts["--texts"]}: ${e.message}`);
  }
}
let topK;
if (opts["--top-k"] !== undefined) {
  try {
    topK = JSON.parse(opts["--top-k"]);
  } catch {
    usage("--top-k must be a JSON value, e.g. 3");
  }
}

const described = (e, withIndex) => {
  const out = { name: e?.name ?? "Error", message: e?.message ?? String(e) };
  if (withIndex) out.index = e?.index ?? null;
  return out;
};
let exitCode = 0;
const note = (e) => {
  if (!OURS.has(e?.name)) exitCode = 1;
};

const options = { unicodeMismatch: policy };
if (opts["--expect-sha256"] !== undefined) options.expectedSha256 = opts["--expect-sha256"];
let line;
let p;
try {
  if (/^https?:\/\//.test(bundle)) {
    const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
    const ort = await import(path.join(root, "node_modules/onnxruntime-web/dist/ort.node.min.mjs"));
    ort.env.wasm.numThreads = 1;
    globalThis.crypto ??= webcrypto; // a browser's crypto.subtle; Node 18 does not expose it globally
    p = await loadFromUrl(bundle, { ...options, ort });
  } else {
    p = await load(bundle, options);
  }
} catch (e) {
  note(e);
  line = { ok: false, error: described(e, false) };
}
if (p) {
  line = { ok: true, digest: p.digest, labels: p.labels };
  try {
    const results = await p.predict(texts, topK === undefined ? Math.min(3, p.labels.length) : topK, { errors: "return" });
    line.predictions = results.map((r) => {
      if (r instanceof Error) {
        note(r);
        return { error: described(r, true) };
      }
      return r;
    });
  } catch (e) {
    note(e);
    line.predict_error = described(e, true);
  }
}
process.stdout.write(JSON.stringify(line) + "\n", () => process.exit(exitCode));
