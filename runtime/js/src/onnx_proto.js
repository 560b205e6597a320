// A minimal reader of the ONNX protobuf wire format: the model's metadata_props, and every tensor that
// points at external data. onnxruntime's JavaScript bindings expose neither, and seqship needs both
// before it hands the bytes to onnxruntime: the labels and tokenizer hash the model was exported with
// live in metadata_props, and a tensor stored outside model.onnx would make onnxruntime read a file
// that the bundle's manifest never hashed.
//
// The same reader, message for message, is runtime/onnx_proto.py; tests/test_onnx_proto.py holds the
// two to identical answers (and identical error messages) on the same files.
//
// Field numbers, from onnx/onnx.proto (proto2, as onnxruntime compiles it):
//   ModelProto: graph=7, metadata_props=14, training_info=20, functions=25
//   StringStringEntryProto: key=1, value=2
//   GraphProto: node=1, initializer=5, sparse_initializer=15
//   NodeProto: attribute=5
//   AttributeProto: t=5, g=6, tensors=10, graphs=11, sparse_tensor=22, sparse_tensors=23
//   TensorProto: name=8, external_data=13, data_location=14 (enum DataLocation: DEFAULT=0, EXTERNAL=1)
//   SparseTensorProto: values=1, indices=2
//   FunctionProto: node=7, attribute_proto=11 (attribute=6 is a list of names, input=4 of strings)
//   TrainingInfoProto: initialization=1, algorithm=2
// Everything else is skipped by its wire type. A field with the right number but another wire type is
// skipped as protobuf itself does (it becomes an unknown field).
import { BundleError } from "./errors.js";

export const MAX_DEPTH = 64;
const METADATA_PREFIX = "seqship.";

function malformed(what) {
  return new BundleError(`model.onnx: not a valid ONNX protobuf (${what}); the file is damaged or not an ONNX model`);
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Iterate the fields of the message in bytes[start, end): calls visit(field, wireType, a, b, at). */
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
      visit(field, 0, varint(), 0, at);
    } else if (wire === 1 || wire === 5) {
      const size = wire === 1 ? 8 : 4;
      if (end - pos < size) throw malformed(`truncated fixed-size field at byte ${at}`);
      pos += size;
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

/**
 * Whether the little-endian IEEE floats of `size` bytes in bytes[a, b) are all finite (a trailing partial
 * value is ignored): NaN and ±Inf are exactly the values whose exponent bits are all ones.
 */
function allFinite(bytes, a, b, size) {
  const n = Math.floor((b - a) / size);
  for (let i = 0, p = a; i < n; i++, p += size) {
    if (size === 4) {
      if ((bytes[p + 3] & 0x7f) === 0x7f && (bytes[p + 2] & 0x80) === 0x80) return false;
    } else if (size === 2) {
      if ((bytes[p + 1] & 0x7c) === 0x7c) return false;
    } else if ((bytes[p + 7] & 0x7f) === 0x7f && (bytes[p + 6] & 0xf0) === 0xf0) {
      return false;
    }
  }
  return true;
}

/**
 * Read model.onnx's bytes (a Uint8Array): {metadata: {key: value}, external: [{tensor, location}],
 * nonfinite: [tensor names]}. `nonfinite` lists, in file order, the FLOAT, FLOAT16 and DOUBLE tensors whose
 * raw_data (or, for FLOAT, packed float_data) holds a NaN or an Inf.
 * `external` lists every TensorProto anywhere in the model (graph initializers, sparse initializers,
 * node attributes, subgraphs, functions, training info) whose data_location is EXTERNAL or that has
 * external_data entries, in file order. Throws BundleError on anything that is not valid protobuf, on
 * nesting deeper than MAX_DEPTH messages, and on a seqship.* metadata key given twice.
 */
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
    let location = null; // proto2 closed enum: values other than DEFAULT/EXTERNAL leave the field as it was
    let isExternal = false;
    let type = 0;
    let raw = null;
    let floats = null;
    const data = [];
    eachField(bytes, a, b, (f, w, x, y) => {
      if (f === 2 && w === 0) type = x;
      else if (f === 9 && w === 2) raw = [x, y];
      else if (f === 4 && w === 2) floats = [x, y]; // float_data, packed
      else if (f === 8 && w === 2) name = text(bytes, x, y);
      else if (f === 13 && w === 2) data.push(entry(x, y, depth + 1));
      else if (f === 14 && w === 0 && (x === 0 || x === 1)) isExternal = x === 1;
    });
    for (const [k, v] of data) if (k === "location") location = v;
    if (isExternal || data.length > 0) external.push({ tensor: name, location: location ?? "" });
    // NaN or Inf weights: onnxruntime's recurrent kernels clamp them into finite garbage, so the outputs
    // alone cannot be trusted to show them. FLOAT, FLOAT16, DOUBLE as raw_data; FLOAT as packed float_data.
    const size = { 1: 4, 10: 2, 11: 8 }[type];
    const span = raw ?? (type === 1 ? floats : null);
    if (size !== undefined && span !== null && !allFinite(bytes, span[0], span[1], size)) nonfinite.push(name);
  }

  function sparse(a, b, depth) {
    enter(depth, a);
    eachField(bytes, a, b, (f, w, x, y) => {
      if (w === 2 && (f === 1 || f === 2)) tensor(x, y, depth + 1);
    });
  }

  function attribute(a, b, depth) {
    enter(depth, a);
    eachField(bytes, a, b, (f, w, x, y) => {
      if (w !== 2) return;
      if (f === 5 || f === 10) tensor(x, y, depth + 1);
      else if (f === 6 || f === 11) graph(x, y, depth + 1);
      else if (f === 22 || f === 23) sparse(x, y, depth + 1);
    });
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
    eachField(bytes, a, b, (f, w, x, y) => {
      if (w === 2 && (f === 1 || f === 2)) graph(x, y, depth + 1);
    });
  }

  eachField(bytes, 0, bytes.length, (f, w, x, y, at) => {
    if (w !== 2) return;
    if (f === 7) graph(x, y, 1);
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
