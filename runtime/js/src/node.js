// Node.js: load a bundle folder with onnxruntime-node. Every file is read once; its size and sha256 are
// checked against the manifest and the checked bytes are what is used (never re-read from disk).
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { open, realpath, stat } from "node:fs/promises";
import path from "node:path";
import * as ort from "onnxruntime-node";

import { BundleError, buildPredictor, checkDigest, checkOptions, checkPin, parseManifest, Predictor } from "./predictor.js";

export { BundleError, InputError, ModelOutputError, TokenizerError } from "./errors.js";
export { LineSplitter, readLines, splitLines } from "./lines.js";
export { Predictor } from "./predictor.js";
export { Tokenizer } from "./tokenizer.js";

const OPTIONS = ["executionProviders", "expectedSha256", "unicodeMismatch"];
export const MAX_MANIFEST = 16 * 1024 * 1024; // bytes: a manifest is a few kilobytes (as runtime/bundle.py)
// Opening a FIFO for reading waits for a writer; O_NONBLOCK opens it at once (and changes nothing for a
// regular file), so that fstat can refuse it. Windows has no such flag, nor FIFOs to open.
const OPEN_FLAGS = constants.O_RDONLY | (constants.O_NONBLOCK ?? 0);

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

/**
 * A manifest file name as runtime/bundle.py's PurePosixPath reads it: empty and "." segments dropped
 * ("./model.onnx", "model.onnx/" and "model.onnx" are the same file). ".." and absolute names were refused
 * by checkManifest.
 */
function memberPath(name) {
  return name.split("/").filter((part) => part !== "" && part !== ".").join("/");
}

/** Open `file` for reading without ever blocking, and fstat the open file: [handle, stats]. */
async function openNoWait(file) {
  const handle = await open(file, OPEN_FLAGS);
  try {
    return [handle, await handle.stat()];
  } catch (e) {
    await handle.close();
    throw e;
  }
}

/** Read from an open file: at most `max` bytes (max + 1 are asked for, to tell "exactly max" from "more"). */
async function readAtMost(handle, max) {
  const chunks = [];
  let total = 0;
  while (total <= max) {
    const buf = Buffer.allocUnsafe(Math.min(1 << 20, max + 1 - total));
    const { bytesRead } = await handle.read(buf, 0, buf.length, total);
    if (bytesRead === 0) break;
    chunks.push(buf.subarray(0, bytesRead));
    total += bytesRead;
  }
  return Buffer.concat(chunks, total);
}

/** Read exactly `size` bytes of an open file: {bytes, length}, length being what the file held (size + 1: more). */
async function readExactly(handle, size) {
  const bytes = Buffer.alloc(size);
  let length = 0;
  while (length < size) {
    const { bytesRead } = await handle.read(bytes, length, size - length, length);
    if (bytesRead === 0) break;
    length += bytesRead;
  }
  if (length === size) length += (await handle.read(Buffer.alloc(1), 0, 1, size)).bytesRead;
  return { bytes, length };
}

async function readManifest(manifestPath) {
  let handle;
  let info;
  try {
    [handle, info] = await openNoWait(manifestPath);
  } catch (e) {
    throw new BundleError(`${manifestPath}: ${e.code === "ENOENT" ? "missing; this folder is not a seqship bundle" : `cannot be read (${e.code})`}`);
  }
  try {
    if (!info.isFile()) throw new BundleError(`${manifestPath}: not a regular file; this folder is not a seqship bundle`);
    const tooLarge = () => new BundleError(`${manifestPath}: manifest.json is larger than 16 MiB; not a seqship manifest`);
    if (info.size > MAX_MANIFEST) throw tooLarge();
    const bytes = await readAtMost(handle, MAX_MANIFEST);
    if (bytes.length > MAX_MANIFEST) throw tooLarge(); // it grew after fstat
    return bytes;
  } finally {
    await handle.close();
  }
}

async function readChecked(root, realRoot, name, entry) {
  const file = path.join(root, memberPath(name));
  let real;
  try {
    real = await realpath(file);
  } catch {
    throw new BundleError(`${file}: listed in the manifest but missing; copy the whole bundle folder`);
  }
  if (real !== realRoot && !real.startsWith(realRoot + path.sep)) {
    throw new BundleError(`${file}: resolves to ${real}, outside the bundle folder (a symlink?); refusing to load it`);
  }
  let handle;
  let info;
  try {
    [handle, info] = await openNoWait(real);
  } catch (e) {
    throw new BundleError(`${file}: cannot be read (${e.code}); copy the whole bundle folder`);
  }
  let read;
  try {
    // a FIFO, a device (a symlink to /dev/zero) or a folder: refused before a byte is read
    if (!info.isFile()) throw new BundleError(`${file}: not a regular file; copy the whole bundle folder`);
    if (info.size !== entry.bytes) {
      throw new BundleError(`${file}: ${info.size} bytes, the manifest says ${entry.bytes} (truncated or replaced); copy the bundle again`);
    }
    read = await readExactly(handle, entry.bytes);
  } finally {
    await handle.close();
  }
  if (read.length !== entry.bytes) {
    const held = read.length > entry.bytes ? `more than ${entry.bytes}` : String(read.length);
    throw new BundleError(`${file}: ${held} bytes, the manifest says ${entry.bytes} (changed while loading); copy the bundle again`);
  }
  const { bytes } = read;
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
    if (!(await stat(realRoot)).isDirectory()) throw new Error("not a folder");
  } catch {
    throw new BundleError(`${root}: bundle folder not found; pass the folder that holds manifest.json`);
  }
  // a manifest that is a link out of the folder is refused, as every listed file is (and as Python and C++ do)
  let realManifest;
  try {
    realManifest = await realpath(manifestPath);
  } catch {
    realManifest = manifestPath; // missing: readManifest says so
  }
  if (realManifest !== manifestPath && !realManifest.startsWith(realRoot + path.sep)) {
    throw new BundleError(`${manifestPath}: resolves to ${realManifest}, outside the bundle folder (a symlink?); refusing to load it`);
  }
  const manifestBytes = await readManifest(manifestPath);
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
