// Prints what the JavaScript ONNX reader (src/onnx_proto.js) finds in a file, as one JSON line:
// {"metadata": {...}, "external": [{"tensor", "location"}], "nonfinite": [names]} or {"error": {"name", "message"}}.
// usage: node tools/onnx_info.mjs MODEL.onnx [MORE.onnx ...]   (one line per file, in order)
// Used by tests/runtime/test_onnx_proto.py to hold the JavaScript and Python readers to the same answers.
import { readFile } from "node:fs/promises";
import { readModelInfo } from "../src/onnx_proto.js";

const files = process.argv.slice(2);
if (files.length === 0) {
  process.stderr.write("usage: node tools/onnx_info.mjs MODEL.onnx [MORE.onnx ...]\n");
  process.exit(2);
}
for (const file of files) {
  const bytes = new Uint8Array(await readFile(file));
  let out;
  try {
    out = readModelInfo(bytes);
  } catch (e) {
    out = { error: { name: e.name, message: e.message } };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}
