// A long-lived JavaScript tokenizer for the Python tests: JSON lines in, JSON lines out, one answer per
// input line, written (and flushed) before the next line is read.
// usage: node tools/tokenize_stdio.mjs TOKENIZER_JSON [--unicode-mismatch refuse|warn]
//   stdin:  {"text": ...} per line (optionally "index": n, the text's index in messages; default: the
//           0-based number of the input line; lines end as every seqship reader's do, src/lines.js,
//           and a blank line is skipped but counted)
//   stdout: {"ids": [...], "truncated": bool} or {"error": {"name", "message", "index"}} per line
// A tokenizer.json that does not load: one line {"error": {"name": "TokenizerError", "message", "index": null}}
// and exit code 1, before any input is read. Bad arguments: exit code 2. A line that is not JSON or has
// no "text": {"error": {"name": "ToolError", ...}} (a bug in the caller).
import { readFile } from "node:fs/promises";
import { readLines } from "../src/lines.js";
import { Tokenizer } from "../src/tokenizer.js";

const USAGE = "usage: node tools/tokenize_stdio.mjs TOKENIZER_JSON [--unicode-mismatch refuse|warn]\n";
function usage(why) {
  process.stderr.write(`tokenize_stdio: ${why}\n${USAGE}`);
  process.exit(2);
}
const args = process.argv.slice(2);
let file;
let policy = "refuse";
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--unicode-mismatch") {
    policy = args[++i];
    if (!["refuse", "warn"].includes(policy)) usage("--unicode-mismatch must be refuse or warn");
  } else if (args[i].startsWith("--")) usage(`unknown option ${args[i]}`);
  else if (file === undefined) file = args[i];
  else usage(`unexpected argument ${args[i]}`);
}
if (file === undefined) usage("TOKENIZER_JSON is required");

// stdout to a pipe is synchronous on Linux; the callback form also covers the other platforms.
const write = (obj) => new Promise((resolve) => process.stdout.write(JSON.stringify(obj) + "\n", resolve));

let tokenizer;
try {
  tokenizer = Tokenizer.fromJson(await readFile(file), { unicodeMismatch: policy, source: file });
} catch (e) {
  await write({ error: { name: e.name, message: e.message, index: null } });
  process.exit(1);
}

let n = 0;
for await (const line of readLines(process.stdin)) {
  const lineNo = n++;
  if (line.trim() === "") continue;
  let job;
  try {
    job = JSON.parse(line);
    if (typeof job !== "object" || job === null || !Object.hasOwn(job, "text")) throw new Error('expected {"text": ...}');
  } catch (e) {
    await write({ error: { name: "ToolError", message: `input line ${lineNo}: ${e.message}`, index: lineNo } });
    continue;
  }
  const index = Number.isInteger(job.index) ? job.index : lineNo;
  try {
    const { ids, truncated } = tokenizer.encode(job.text, index);
    await write({ ids, truncated });
  } catch (e) {
    await write({ error: { name: e.name, message: e.message, index: e.index ?? null } });
  }
}
