// A minimal reader of the ONNX protobuf wire format: the model's metadata_props, and every tensor that
// points at external data. onnxruntime's JavaScript bindings expose neither, and seqship needs both
// before it hands the bytes to onnxruntime: the labels and tokenizer hash the model was exported with
// live in metadata_props, and a tensor stored outside model.onnx would make onnxruntime read a file
// that the bundle's manifest never hashed.
//
// The same reader, message for message, is runtime/onnx_proto.py; tests/runtime/test_onnx_proto.py holds the
// two to identical answers (and identical error messages) on the same files.
//
// Field numbers, from onnx/onnx.proto (proto2, as onnxruntime compiles it):
//   ModelProto: graph=7, metadata_props=14, training_info=20, functions=25
//   StringStringEntryProto: key=1, value=2
//   GraphProto: node=1, initializer=5, sparse_initializer=15
//   NodeProto: attribute=5
//   AttributeProto: t=5, g=6, tensors=10, graphs=11, sparse_tensor=22, sparse_tensors=23
//   TensorProto: data_type=2 (int32), float_data=4, int32_data=5, name=8, raw_data=9, double_data=10,
//     external_data=13, data_location=14 (enum DataLocation: DEFAULT=0, EXTERNAL=1)
//   SparseTensorProto: values=1, indices=2
//   FunctionProto: node=7, attribute_proto=11 (attribute=6 is a list of names, input=4 of strings)
//   TrainingInfoProto: initialization=1, algorithm=2
//   AttributeProto (for non-finite floats): name=1, f=2, floats=7
// Everything else is skipped by its wire type. A field with the right number but another wire type is
// skipped as protobuf itself does (it becomes an unknown field). A repeated field may come in any number
// of chunks, packed (wire type 2) or not, mixed: every chunk counts. int32 and enum fields keep the low 32
// bits of their varint, as protobuf does (data_type 2**32 + 1 is FLOAT).
//
// Non-finite values: every value a FLOAT, FLOAT16, DOUBLE or BFLOAT16 tensor holds, from raw_data (the
// last one, the one protobuf keeps), float_data, double_data and, for FLOAT16 / BFLOAT16, int32_data
// (16-bit patterns: the low 16 bits of each varint), and every float of an attribute (f, floats), is
// checked; NaN or ±Inf anywhere puts the tensor's name (or "attribute <name>") in `nonfinite`. The checks
// test the exponent bits, so the Python and JavaScript readers agree bit for bit.
import { BundleError } from "./errors.js";

export const MAX_DEPTH = 64;
const METADATA_PREFIX = "seqship.";

function malformed(what) {
  return new BundleError(`model.onnx: not a valid ONNX protobuf (${what}); the file is damaged or not an ONNX model`);
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Iterate the fields of the message in bytes[start, end): calls visit(field, wireType, a, b, at). Wire type
 * 0 gives (value, where its varint starts); wire types 1, 5 and 2 give the payload's [a, b). A varint's
 * value is exact below 2**53; low32() reads the low 32 bits of any varint exactly.
 */
function eachField(bytes, start, end, visit) {
  let pos = start;
  const varint = () => {
    const at = pos;
    let value = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (pos >= end) throw malformed(`truncated varint at byte ${at}`);
      const b = bytes[pos++];
      if (i === 9 && b > 1) throw malformed(`varint longer than 64 bits at byte ${at}`);
      value += (b & 0x7f) * mul;
      mul *= 128;
      if (b < 0x80) return value;
    }
    throw malformed(`varint longer than 64 bits at byte ${at}`);
  };
  while (pos < end) {
    const at = pos;
    const key = varint();
    if (key > 0xffffffff) throw malformed(`field key out of range at byte ${at}`);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (field === 0) throw malformed(`field number 0 at byte ${at}`);
    if (wire === 0) {
      const valueAt = pos;
      visit(field, 0, varint(), valueAt, at);
    } else if (wire === 1 || wire === 5) {
      const size = wire === 1 ? 8 : 4;
      if (end - pos < size) throw malformed(`truncated fixed-size field at byte ${at}`);
      pos += size;
      visit(field, wire, pos - size, pos, at);
    } else if (wire === 2) {
      const lenAt = pos;
      const length = varint();
      if (length > end - pos) throw malformed(`a length at byte ${lenAt} runs past the end of its message`);
      visit(field, 2, pos, pos + length, at);
      pos += length;
    } else if (wire === 3 || wire === 4) {
      throw malformed(`wire type ${wire} (a group, which ONNX never uses) at byte ${at}`);
    } else {
      throw malformed(`invalid wire type ${wire} at byte ${at}`);
    }
  }
}

function text(bytes, a, b) {
  try {
    return utf8.decode(bytes.subarray(a, b));
  } catch {
    throw malformed(`a string at byte ${a} is not UTF-8`);
  }
}

/** The low 32 bits of the (already checked) varint at bytes[p], as protobuf keeps them for an int32 field. */
function low32(bytes, p) {
  let value = 0;
  let mul = 1;
  for (let i = 0; i < 5; i++) {
    const b = bytes[p + i];
    value += (b & 0x7f) * mul;
    mul *= 128;
    if (b < 0x80) break;
  }
  return value % 4294967296;
}

// A float is NaN or ±Inf exactly when all its exponent bits are set. The kinds, by data_type:
export const FLOAT_TYPES = { 1: "f4", 10: "f2", 11: "f8", 16: "bf16" }; // FLOAT, FLOAT16, DOUBLE, BFLOAT16
const SIZE = { f4: 4, f2: 2, f8: 8, bf16: 2 };
const F2_MASK = 0x7c00;
const BF16_MASK = 0x7f80;

/** Whether a little-endian float of `kind` in bytes[a, b) (a trailing partial value ignored) is NaN or ±Inf. */
function nonfiniteBits(bytes, a, b, kind) {
  const size = SIZE[kind];
  const n = Math.floor((b - a) / size);
  for (let i = 0, p = a; i < n; i++, p += size) {
    if (kind === "f4") {
      if ((bytes[p + 3] & 0x7f) === 0x7f && (bytes[p + 2] & 0x80) === 0x80) return true;
    } else if (kind === "f2") {
      if ((bytes[p + 1] & 0x7c) === 0x7c) return true;
    } else if (kind === "bf16") {
      if ((bytes[p + 1] & 0x7f) === 0x7f && (bytes[p] & 0x80) === 0x80) return true;
    } else if ((bytes[p + 7] & 0x7f) === 0x7f && (bytes[p + 6] & 0xf0) === 0xf0) {
      return true;
    }
  }
  return false;
}

/**
 * The packed varints of bytes[a, b) (int32_data of a FLOAT16 / BFLOAT16 tensor): [whether the low 16 bits of
 * one is a FLOAT16 NaN/Inf pattern, whether one is a BFLOAT16 NaN/Inf pattern]. A malformed varint is
 * refused with the message the field reader gives.
 */
function nonfinite16BitVarints(bytes, a, b) {
  let f16 = false;
  let bf16 = false;
  let pos = a;
  while (pos < b) {
    const at = pos;
    let low = 0;
    for (let i = 0; ; i++) {
      if (pos >= b) throw malformed(`truncated varint at byte ${at}`);
      const c = bytes[pos++];
      if (i === 9 && c > 1) throw malformed(`varint longer than 64 bits at byte ${at}`);
      if (i < 3) low |= (c & 0x7f) << (7 * i);
      if (c < 0x80) break;
    }
    low &= 0xffff;
    if ((low & F2_MASK) === F2_MASK) f16 = true;
    if ((low & BF16_MASK) === BF16_MASK) bf16 = true;
  }
  return [f16, bf16];
}

/**
 * Read model.onnx's bytes (a Uint8Array): {metadata: {key: value}, external: [{tensor, location}],
 * nonfinite: [names]}. `nonfinite` lists, in file order, the tensors (by name) and attributes
 * ("attribute <name>") holding a NaN or ±Inf (see the top of this file for what is scanned).
 * `external` lists every TensorProto anywhere in the model (graph initializers, sparse initializers,
 * node attributes, subgraphs, functions, training info) whose data_location is EXTERNAL or that has
 * external_data entries, in file order. Throws BundleError on anything that is not valid protobuf, on
 * nesting deeper than MAX_DEPTH messages, and on a seqship.* metadata key given twice.
 */
// A single-valued message field given twice: protobuf merges the parts (so a check of each part alone
// proves nothing about the merged whole); refused instead. Same rule and message as runtime/onnx_proto.py.
function twice(seen, f, at, message) {
  if (seen.has(f)) {
    throw new BundleError(
      `model.onnx: field ${f} of a ${message} appears twice (byte ${at}); protobuf would merge the parts, which seqship refuses: re-export the model`,
    );
  }
  seen.add(f);
}

export function readModelInfo(bytes) {
  if (!(bytes instanceof Uint8Array)) throw new TypeError("readModelInfo needs the model's bytes as a Uint8Array");
  const external = [];
  const nonfinite = [];
  const metadata = Object.create(null);

  const enter = (depth, a) => {
    if (depth > MAX_DEPTH) throw malformed(`messages nested deeper than ${MAX_DEPTH} levels at byte ${a}`);
  };

  function entry(a, b, depth) {
    enter(depth, a);
    let key = "";
    let value = "";
    eachField(bytes, a, b, (f, w, x, y) => {
      if (w !== 2) return;
      if (f === 1) key = text(bytes, x, y);
      else if (f === 2) value = text(bytes, x, y);
    });
    return [key, value];
  }

  function tensor(a, b, depth) {
    enter(depth, a);
    let name = "";
    let location = null;
    let isExternal = false;
    let type = 0;
    let raw = null;
    // float_data / double_data / int32_data are scanned chunk by chunk as they come (data_type may come
    // after them); raw_data, a singular field (the last one wins), once data_type is known.
    let badFloat = false;
    let badDouble = false;
    let badF16 = false;
    let badBf16 = false;
    const data = [];
    eachField(bytes, a, b, (f, w, x, y) => {
      if (f === 2 && w === 0) type = low32(bytes, y); // an int32 field: protobuf keeps the low 32 bits
      else if (f === 9 && w === 2) raw = [x, y];
      else if (f === 4 && (w === 2 || w === 5)) badFloat ||= nonfiniteBits(bytes, x, y, "f4"); // float_data: a packed chunk, or one value
      else if (f === 10 && (w === 2 || w === 1)) badDouble ||= nonfiniteBits(bytes, x, y, "f8"); // double_data
      else if (f === 5 && w === 2) {
        // int32_data, a packed chunk: 16-bit patterns for FLOAT16 / BFLOAT16 (always decoded: a bad varint is an error)
        const [f16, bf16] = nonfinite16BitVarints(bytes, x, y);
        badF16 ||= f16;
        badBf16 ||= bf16;
      } else if (f === 5 && w === 0) {
        const low = low32(bytes, y) & 0xffff; // int32_data, one value
        badF16 ||= (low & F2_MASK) === F2_MASK;
        badBf16 ||= (low & BF16_MASK) === BF16_MASK;
      } else if (f === 8 && w === 2) name = text(bytes, x, y);
      else if (f === 13 && w === 2) data.push(entry(x, y, depth + 1));
      else if (f === 14 && w === 0) {
        const v = low32(bytes, y); // a closed proto2 enum (int32 on the wire): other values leave it as it was
        if (v === 0 || v === 1) isExternal = v === 1;
      }
    });
    for (const [k, v] of data) if (k === "location") location = v;
    if (isExternal || data.length > 0) external.push({ tensor: name, location: location ?? "" });
    // NaN or Inf weights: onnxruntime's recurrent kernels clamp them into finite garbage, so the outputs
    // alone cannot be trusted to show them. Every value of a FLOAT, FLOAT16, DOUBLE or BFLOAT16 tensor.
    const kind = Object.hasOwn(FLOAT_TYPES, type) ? FLOAT_TYPES[type] : undefined;
    if (
      kind !== undefined &&
      (badFloat ||
        badDouble ||
        (type === 10 && badF16) ||
        (type === 16 && badBf16) ||
        (raw !== null && nonfiniteBits(bytes, raw[0], raw[1], kind)))
    ) {
      nonfinite.push(name);
    }
  }

  function sparse(a, b, depth) {
    enter(depth, a);
    const seen = new Set();
    eachField(bytes, a, b, (f, w, x, y, at) => {
      if (w === 2 && (f === 1 || f === 2)) {
        twice(seen, f, at, "SparseTensorProto");
        tensor(x, y, depth + 1);
      }
    });
  }

  function attribute(a, b, depth) {
    enter(depth, a);
    let nameSpan = null; // decoded only if it is needed, in a message
    let bad = false;
    const seen = new Set();
    eachField(bytes, a, b, (f, w, x, y, at) => {
      if (w === 2 && (f === 5 || f === 6 || f === 22)) twice(seen, f, at, "AttributeProto"); // t, g, sparse_tensor
      if ((f === 2 && w === 5) || (f === 7 && (w === 2 || w === 5))) bad ||= nonfiniteBits(bytes, x, y, "f4"); // f; floats
      else if (w !== 2) return;
      else if (f === 1) nameSpan = [x, y];
      else if (f === 5 || f === 10) tensor(x, y, depth + 1);
      else if (f === 6 || f === 11) graph(x, y, depth + 1);
      else if (f === 22 || f === 23) sparse(x, y, depth + 1);
    });
    if (bad) nonfinite.push("attribute " + (nameSpan !== null ? text(bytes, nameSpan[0], nameSpan[1]) : ""));
  }

  function node(a, b, depth) {
    enter(depth, a);
    eachField(bytes, a, b, (f, w, x, y) => {
      if (w === 2 && f === 5) attribute(x, y, depth + 1);
    });
  }

  function graph(a, b, depth) {
    enter(depth, a);
    eachField(bytes, a, b, (f, w, x, y) => {
      if (w !== 2) return;
      if (f === 1) node(x, y, depth + 1);
      else if (f === 5) tensor(x, y, depth + 1);
      else if (f === 15) sparse(x, y, depth + 1);
    });
  }

  function fn(a, b, depth) {
    enter(depth, a);
    eachField(bytes, a, b, (f, w, x, y) => {
      if (w !== 2) return;
      if (f === 7) node(x, y, depth + 1);
      else if (f === 11) attribute(x, y, depth + 1);
    });
  }

  function trainingInfo(a, b, depth) {
    enter(depth, a);
    const seen = new Set();
    eachField(bytes, a, b, (f, w, x, y, at) => {
      if (w === 2 && (f === 1 || f === 2)) {
        twice(seen, f, at, "TrainingInfoProto");
        graph(x, y, depth + 1);
      }
    });
  }

  const modelSeen = new Set();
  eachField(bytes, 0, bytes.length, (f, w, x, y, at) => {
    if (w !== 2) return;
    if (f === 7) {
      twice(modelSeen, f, at, "ModelProto");
      graph(x, y, 1);
    }
    else if (f === 14) {
      const [key, value] = entry(x, y, 1);
      if (key.startsWith(METADATA_PREFIX) && Object.hasOwn(metadata, key)) {
        throw new BundleError(
          `model.onnx: metadata key ${key} appears more than once (byte ${at}); the model's binding to its labels and tokenizer is ambiguous, re-export it`,
        );
      }
      metadata[key] = value;
    } else if (f === 20) trainingInfo(x, y, 1);
    else if (f === 25) fn(x, y, 1);
  });
  const plain = {}; // a plain object, but a key named "__proto__" stays a key (no prototype change)
  for (const k of Object.keys(metadata)) Object.defineProperty(plain, k, { value: metadata[k], writable: true, enumerable: true, configurable: true });
  return { metadata: plain, external, nonfinite };
}
