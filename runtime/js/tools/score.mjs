// Scores texts and token-id probes with the Node predictor, for the cross-runtime parity test.
// usage: node tools/score.mjs BUNDLE_DIR INPUT.json OUTPUT.json [--unicode-mismatch refuse|warn]
//   INPUT: {"texts": [...], "probes": [[[ids...], ...], ...]}
//   OUTPUT: {"token_ids": [[...]], "logits": [[...]], "labels": [...], "probe_logits": [...], "latency_us_p50": n}
import { readFile, writeFile } from "node:fs/promises";
import { load } from "../src/node.js";

const args = process.argv.slice(2);
let unicodeMismatch = "refuse";
const at = args.indexOf("--unicode-mismatch");
if (at >= 0) [, unicodeMismatch] = args.splice(at, 2);
const [bundle, input, output] = args;
if (!bundle || !input || !output || args.length !== 3 || !["refuse", "warn"].includes(unicodeMismatch)) {
  process.stderr.write("usage: node tools/score.mjs BUNDLE_DIR INPUT.json OUTPUT.json [--unicode-mismatch refuse|warn]\n");
  process.exit(2);
}
const job = JSON.parse(await readFile(input, "utf8"));
const p = await load(bundle, { unicodeMismatch });
const logits = await p.logits(job.texts);
const results = await p.predict(job.texts);
const probeLogits = [];
for (const rows of job.probes || []) probeLogits.push(await p.logitsFromIds(rows));
const times = [];
for (let i = 0; i < Math.min(300, job.texts.length); i++) {
  const t0 = process.hrtime.bigint();
  await p.predict([job.texts[i]]);
  times.push(Number(process.hrtime.bigint() - t0) / 1000);
}
times.sort((a, b) => a - b);
await writeFile(output, JSON.stringify({
  token_ids: job.texts.map((t, i) => p.tokenizer.encode(t, i).ids),
  logits,
  labels: results.map((r) => r.label),
  probe_logits: probeLogits,
  latency_us_p50: times[Math.floor(times.length / 2)],
}));
