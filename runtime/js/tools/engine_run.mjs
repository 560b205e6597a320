// Runs a model.onnx on batches of token ids in onnxruntime-node or onnxruntime-web (WebAssembly, in
// Node), for the multi-engine parity gate (exporters/portability.py). Engine only: no bundle checks.
// usage: node tools/engine_run.mjs node|wasm MODEL.onnx INPUT.json OUTPUT.json
//   INPUT: {"batches": [{"ids": [[...]], "lengths": [...]}]}
//   OUTPUT: {"version", "settings", "logits": [[[...]]]} or {"error": "..."}
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const [backend, model, input, output] = process.argv.slice(2);
if (!["node", "wasm"].includes(backend) || !output) {
  console.error("usage: node tools/engine_run.mjs node|wasm MODEL.onnx INPUT.json OUTPUT.json");
  process.exit(2);
}
const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const pkg = backend === "node" ? "onnxruntime-node" : "onnxruntime-web";
const version = JSON.parse(await readFile(path.join(root, "node_modules", pkg, "package.json"), "utf8")).version;
let result;
try {
  const ort = backend === "node"
    ? await import("onnxruntime-node")
    : await import(path.join(root, "node_modules/onnxruntime-web/dist/ort.node.min.mjs"));
  if (backend === "wasm") ort.env.wasm.numThreads = 1;
  const session = await ort.InferenceSession.create(await readFile(model), { executionProviders: [backend === "node" ? "cpu" : "wasm"] });
  const job = JSON.parse(await readFile(input, "utf8"));
  const logits = [];
  for (const b of job.batches) {
    const B = b.lengths.length;
    const T = b.ids[0].length;
    const ids = BigInt64Array.from(b.ids.flat(), (v) => BigInt(v));
    const out = await session.run({
      token_ids: new ort.Tensor("int64", ids, [B, T]),
      lengths: new ort.Tensor("int64", BigInt64Array.from(b.lengths, (v) => BigInt(v)), [B]),
    });
    const C = out.logits.dims[1];
    logits.push(Array.from({ length: B }, (_, r) => Array.from(out.logits.data.subarray(r * C, (r + 1) * C))));
  }
  result = { version, settings: backend === "node" ? "CPU execution provider" : "WebAssembly (SIMD), 1 thread, in Node", logits };
} catch (e) {
  result = { version, error: `${e.name}: ${String(e.message).split("\n")[0].slice(0, 400)}` };
}
await writeFile(output, JSON.stringify(result));
