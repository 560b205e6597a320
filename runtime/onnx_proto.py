"""A minimal reader of the ONNX protobuf wire format, standard library only (no `onnx` import).

It answers two questions before onnxruntime ever sees a model: what `metadata_props` say (the labels and
tokenizer hash a seqship model was exported with), and whether any tensor, anywhere in the model, points
at external data (a file outside model.onnx that the bundle's manifest never hashed).

The same reader, message for message, is runtime/js/src/onnx_proto.js; tests/runtime/test_onnx_proto.py holds
the two to identical answers (and identical error messages) on the same files.

Field numbers, from onnx/onnx.proto (proto2, as onnxruntime compiles it):
  ModelProto: graph=7, metadata_props=14, training_info=20, functions=25
  StringStringEntryProto: key=1, value=2
  GraphProto: node=1, initializer=5, sparse_initializer=15
  NodeProto: attribute=5
  AttributeProto: t=5, g=6, tensors=10, graphs=11, sparse_tensor=22, sparse_tensors=23
  TensorProto: data_type=2 (int32), float_data=4, int32_data=5, name=8, raw_data=9, double_data=10,
    external_data=13, data_location=14 (enum DataLocation: DEFAULT=0, EXTERNAL=1)
  SparseTensorProto: values=1, indices=2
  FunctionProto: node=7, attribute_proto=11 (attribute=6 is a list of names, input=4 of strings)
  TrainingInfoProto: initialization=1, algorithm=2
  AttributeProto (for non-finite floats): name=1, f=2, floats=7
Everything else is skipped by its wire type. A field with the right number but another wire type is
skipped, as protobuf itself does (it becomes an unknown field). A repeated field may come in any number of
chunks, packed (wire type 2) or not, mixed: every chunk counts. int32 and enum fields keep the low 32 bits
of their varint, as protobuf does (data_type 2**32 + 1 is FLOAT).

Non-finite values: every value a FLOAT, FLOAT16, DOUBLE or BFLOAT16 tensor holds, from raw_data (the last
one, the one protobuf keeps), float_data, double_data and, for FLOAT16 / BFLOAT16, int32_data (16-bit
patterns: the low 16 bits of each varint), and every float of an attribute (f, floats), is checked; NaN or
±Inf anywhere puts the tensor's name (or "attribute <name>") in `nonfinite`. The checks test the exponent
bits, so the Python and JavaScript readers agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from seqship.runtime.errors import BundleError

MAX_DEPTH = 64
METADATA_PREFIX = "seqship."


@dataclass(frozen=True)
class ModelInfo:
    """What read_model_info found: metadata_props, and (tensor name, location) of every external tensor."""

    metadata: dict[str, str] = field(default_factory=dict)
    external: list[tuple[str, str]] = field(default_factory=list)
    # tensors (by name) and attributes ("attribute <name>") holding NaN or ±Inf (damaged weights), in file order
    nonfinite: list[str] = field(default_factory=list)


def _twice(seen: set, f: int, at: int, message: str) -> None:
    """A single-valued message field given twice: protobuf merges the parts (so a check of each part alone
    proves nothing about the merged whole); refused instead."""
    if f in seen:
        raise BundleError(
            f"model.onnx: field {f} of a {message} appears twice (byte {at}); protobuf would merge the parts, "
            "which seqship refuses: re-export the model"
        )
    seen.add(f)


def _malformed(what: str) -> BundleError:
    return BundleError(f"model.onnx: not a valid ONNX protobuf ({what}); the file is damaged or not an ONNX model")


Visit = Callable[[int, int, int, int, int], None]


def _each_field(data: bytes, start: int, end: int, visit: Visit) -> None:
    """Call visit(field, wire_type, a, b, at) for each field of the message in data[start:end]:
    wire type 0 gives (value, where its varint starts), wire types 1, 5 and 2 give the payload's [a, b)."""
    pos = start

    def varint() -> int:
        nonlocal pos
        at = pos
        value = 0
        for i in range(10):
            if pos >= end:
                raise _malformed(f"truncated varint at byte {at}")
            b = data[pos]
            pos += 1
            if i == 9 and b > 1:
                raise _malformed(f"varint longer than 64 bits at byte {at}")
            value |= (b & 0x7F) << (7 * i)
            if b < 0x80:
                return value
        raise _malformed(f"varint longer than 64 bits at byte {at}")  # unreachable: the 10th byte is checked

    while pos < end:
        at = pos
        key = varint()
        if key > 0xFFFFFFFF:
            raise _malformed(f"field key out of range at byte {at}")
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _malformed(f"field number 0 at byte {at}")
        if wire == 0:
            value_at = pos
            visit(number, 0, varint(), value_at, at)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if end - pos < size:
                raise _malformed(f"truncated fixed-size field at byte {at}")
            pos += size
            visit(number, wire, pos - size, pos, at)
        elif wire == 2:
            len_at = pos
            length = varint()
            if length > end - pos:
                raise _malformed(f"a length at byte {len_at} runs past the end of its message")
            visit(number, 2, pos, pos + length, at)
            pos += length
        elif wire in (3, 4):
            raise _malformed(f"wire type {wire} (a group, which ONNX never uses) at byte {at}")
        else:
            raise _malformed(f"invalid wire type {wire} at byte {at}")


# A float is NaN or ±Inf exactly when all its exponent bits are set: data_type -> (the little-endian unsigned
# integer of its size, the exponent mask). FLOAT, FLOAT16, DOUBLE, BFLOAT16.
FLOAT_TYPES = {
    1: ("<u4", 0x7F800000),
    10: ("<u2", 0x7C00),
    11: ("<u8", 0x7FF0000000000000),
    16: ("<u2", 0x7F80),
}
_F4 = FLOAT_TYPES[1]
_F8 = FLOAT_TYPES[11]
_F2_MASK = FLOAT_TYPES[10][1]
_BF16_MASK = FLOAT_TYPES[16][1]
_BLOCK = 1 << 20  # values (or bytes) looked at per numpy call: bounded temporary memory


def _nonfinite_bits(data: bytes, a: int, b: int, kind: tuple[str, int]) -> bool:
    """Whether a little-endian float in data[a:b] (a trailing partial value ignored) is NaN or ±Inf."""
    if b - a == 4 and kind is _F4:  # one unpacked value (wire type 5): no numpy call per field
        return (data[a + 3] & 0x7F) == 0x7F and (data[a + 2] & 0x80) == 0x80
    if b - a == 8 and kind is _F8:  # wire type 1
        return (data[a + 7] & 0x7F) == 0x7F and (data[a + 6] & 0xF0) == 0xF0
    dtype, mask = kind
    size = np.dtype(dtype).itemsize
    n = (b - a) // size
    m = np.array(mask, dtype=dtype)
    for first in range(0, n, _BLOCK):
        values = np.frombuffer(data, dtype=dtype, count=min(_BLOCK, n - first), offset=a + first * size)
        if ((values & m) == m).any():
            return True
    return False


def _nonfinite_16bit_varints(data: bytes, a: int, b: int) -> tuple[bool, bool]:
    """The packed varints of data[a:b] (int32_data of a FLOAT16 / BFLOAT16 tensor): whether the low 16 bits
    of one is a FLOAT16 NaN/Inf pattern, and whether one is a BFLOAT16 NaN/Inf pattern. A malformed varint
    is refused with the message the field reader gives (the first one, by position)."""
    if b - a <= 32:  # a few values: no numpy calls
        return _nonfinite_16bit_varints_one_by_one(data, a, b)
    return _nonfinite_16bit_varints_numpy(data, a, b)


def _nonfinite_16bit_varints_one_by_one(data: bytes, a: int, b: int) -> tuple[bool, bool]:
    f16 = bf16 = False
    pos = a
    while pos < b:
        at = pos
        low = 0
        for i in range(10):
            if pos >= b:
                raise _malformed(f"truncated varint at byte {at}")
            c = data[pos]
            pos += 1
            if i == 9 and c > 1:
                raise _malformed(f"varint longer than 64 bits at byte {at}")
            if i < 3:
                low |= (c & 0x7F) << (7 * i)
            if c < 0x80:
                break
        low &= 0xFFFF
        f16 = f16 or (low & _F2_MASK) == _F2_MASK
        bf16 = bf16 or (low & _BF16_MASK) == _BF16_MASK
    return f16, bf16


def _nonfinite_16bit_varints_numpy(data: bytes, a: int, b: int) -> tuple[bool, bool]:
    f16 = bf16 = False
    pos = a
    while pos < b:
        stop = min(b, pos + _BLOCK)
        buf = np.frombuffer(data, dtype=np.uint8, count=stop - pos, offset=pos)
        ends = np.flatnonzero(buf < 0x80)  # the last byte of each varint
        tail = int(ends[-1]) + 1 if ends.size else 0  # where the varint still open at `stop` starts
        if ends.size:
            starts = np.empty_like(ends)
            starts[0] = 0
            starts[1:] = ends[:-1] + 1
            lengths = ends - starts + 1
            too_long = np.flatnonzero((lengths > 10) | ((lengths == 10) & (buf[ends] > 1)))
            if too_long.size:
                raise _malformed(f"varint longer than 64 bits at byte {pos + int(starts[too_long[0]])}")
            last = len(buf) - 1
            low = buf[starts].astype(np.uint32) & 0x7F
            low |= np.where(lengths >= 2, buf[np.minimum(starts + 1, last)].astype(np.uint32) & 0x7F, 0) << 7
            low |= np.where(lengths >= 3, buf[np.minimum(starts + 2, last)].astype(np.uint32) & 0x03, 0) << 14
            f16 = f16 or bool(((low & _F2_MASK) == _F2_MASK).any())
            bf16 = bf16 or bool(((low & _BF16_MASK) == _BF16_MASK).any())
        if len(buf) - tail >= 10:  # ten bytes that all continue: the tenth is more than 1
            raise _malformed(f"varint longer than 64 bits at byte {pos + tail}")
        if stop == b and tail < len(buf):
            raise _malformed(f"truncated varint at byte {pos + tail}")
        pos += tail
    return f16, bf16


def read_model_info(data: bytes) -> ModelInfo:
    """Read model.onnx's bytes: its metadata_props and every tensor stored as external data.

    `external` lists every TensorProto anywhere in the model (graph initializers, sparse initializers,
    node attributes, subgraphs, functions, training info) whose data_location is EXTERNAL or that has
    external_data entries, in file order, as (tensor name, location). `nonfinite` lists, in file order, the
    tensors (by name) and attributes ("attribute <name>") holding a NaN or ±Inf (see the module's docstring
    for what is scanned). Raises BundleError (message starting "model.onnx: ") on anything that is not
    valid protobuf, on nesting deeper than MAX_DEPTH messages, and on a seqship.* metadata key given twice.
    Never raises anything else.
    """
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("read_model_info needs the model's bytes")
    external: list[tuple[str, str]] = []
    metadata: dict[str, str] = {}
    nonfinite: list[str] = []

    def enter(depth: int, a: int) -> None:
        if depth > MAX_DEPTH:
            raise _malformed(f"messages nested deeper than {MAX_DEPTH} levels at byte {a}")

    def text(a: int, b: int) -> str:
        try:
            return bytes(data[a:b]).decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed(f"a string at byte {a} is not UTF-8") from None

    def entry(a: int, b: int, depth: int) -> tuple[str, str]:
        enter(depth, a)
        kv = ["", ""]

        def visit(f, w, x, y, at):
            if w == 2 and f in (1, 2):
                kv[f - 1] = text(x, y)

        _each_field(data, a, b, visit)
        return kv[0], kv[1]

    def tensor(a: int, b: int, depth: int) -> None:
        enter(depth, a)
        # float_data / double_data / int32_data are scanned chunk by chunk as they come (data_type may come
        # after them); raw_data, a singular field (the last one wins), once data_type is known.
        state = {
            "name": "",
            "external": False,
            "type": 0,
            "raw": None,
            "float": False,
            "double": False,
            "f16": False,
            "bf16": False,
        }
        entries: list[tuple[str, str]] = []

        def visit(f, w, x, y, at):
            if f == 2 and w == 0:
                state["type"] = x & 0xFFFFFFFF  # an int32 field: protobuf keeps the low 32 bits
            elif f == 9 and w == 2:
                state["raw"] = (x, y)
            elif f == 4 and w in (2, 5):  # float_data: a packed chunk, or one value
                state["float"] = state["float"] or _nonfinite_bits(data, x, y, _F4)
            elif f == 10 and w in (2, 1):  # double_data: a packed chunk, or one value
                state["double"] = state["double"] or _nonfinite_bits(data, x, y, _F8)
            elif f == 5 and w == 2:  # int32_data, a packed chunk: 16-bit patterns for FLOAT16 / BFLOAT16
                f16, bf16 = _nonfinite_16bit_varints(data, x, y)
                state["f16"] = state["f16"] or f16
                state["bf16"] = state["bf16"] or bf16
            elif f == 5 and w == 0:  # int32_data, one value
                low = x & 0xFFFF
                state["f16"] = state["f16"] or (low & _F2_MASK) == _F2_MASK
                state["bf16"] = state["bf16"] or (low & _BF16_MASK) == _BF16_MASK
            elif f == 8 and w == 2:
                state["name"] = text(x, y)
            elif f == 13 and w == 2:
                entries.append(entry(x, y, depth + 1))
            elif f == 14 and w == 0 and (x & 0xFFFFFFFF) in (0, 1):  # a closed proto2 enum (int32 on the wire):
                state["external"] = (x & 0xFFFFFFFF) == 1  # other values leave it as it was

        _each_field(data, a, b, visit)
        location = ""
        for k, v in entries:
            if k == "location":
                location = v
        if state["external"] or entries:
            external.append((state["name"], location))
        # NaN or Inf weights: onnxruntime's recurrent kernels clamp them into finite garbage, so the outputs
        # alone cannot be trusted to show them. Every value of a FLOAT, FLOAT16, DOUBLE or BFLOAT16 tensor.
        kind = FLOAT_TYPES.get(state["type"])
        if kind is not None and (
            state["float"]
            or state["double"]
            or (state["type"] == 10 and state["f16"])
            or (state["type"] == 16 and state["bf16"])
            or (state["raw"] is not None and _nonfinite_bits(data, *state["raw"], kind))
        ):
            nonfinite.append(state["name"])

    def sparse(a: int, b: int, depth: int) -> None:
        enter(depth, a)
        seen: set = set()

        def visit(f, w, x, y, at):
            if w == 2 and f in (1, 2):
                _twice(seen, f, at, "SparseTensorProto")
                tensor(x, y, depth + 1)

        _each_field(data, a, b, visit)

    def attribute(a: int, b: int, depth: int) -> None:
        enter(depth, a)
        state = {"name": None, "bad": False}
        seen: set = set()

        def visit(f, w, x, y, at):
            if w == 2 and f in (5, 6, 22):  # t, g, sparse_tensor: single-valued
                _twice(seen, f, at, "AttributeProto")
            if (f == 2 and w == 5) or (f == 7 and w in (2, 5)):  # f; floats, a packed chunk or one value
                state["bad"] = state["bad"] or _nonfinite_bits(data, x, y, _F4)
            elif w != 2:
                return
            elif f == 1:
                state["name"] = (x, y)  # decoded only if it is needed, in a message
            elif f in (5, 10):
                tensor(x, y, depth + 1)
            elif f in (6, 11):
                graph(x, y, depth + 1)
            elif f in (22, 23):
                sparse(x, y, depth + 1)

        _each_field(data, a, b, visit)
        if state["bad"]:
            nonfinite.append("attribute " + (text(*state["name"]) if state["name"] is not None else ""))

    def node(a: int, b: int, depth: int) -> None:
        enter(depth, a)

        def visit(f, w, x, y, at):
            if w == 2 and f == 5:
                attribute(x, y, depth + 1)

        _each_field(data, a, b, visit)

    def graph(a: int, b: int, depth: int) -> None:
        enter(depth, a)

        def visit(f, w, x, y, at):
            if w != 2:
                return
            if f == 1:
                node(x, y, depth + 1)
            elif f == 5:
                tensor(x, y, depth + 1)
            elif f == 15:
                sparse(x, y, depth + 1)

        _each_field(data, a, b, visit)

    def function(a: int, b: int, depth: int) -> None:
        enter(depth, a)

        def visit(f, w, x, y, at):
            if w != 2:
                return
            if f == 7:
                node(x, y, depth + 1)
            elif f == 11:
                attribute(x, y, depth + 1)

        _each_field(data, a, b, visit)

    def training_info(a: int, b: int, depth: int) -> None:
        enter(depth, a)
        seen: set = set()

        def visit(f, w, x, y, at):
            if w == 2 and f in (1, 2):
                _twice(seen, f, at, "TrainingInfoProto")
                graph(x, y, depth + 1)

        _each_field(data, a, b, visit)

    model_seen: set = set()

    def model(f, w, x, y, at):
        if w != 2:
            return
        if f == 7:
            _twice(model_seen, f, at, "ModelProto")
            graph(x, y, 1)
        elif f == 14:
            key, value = entry(x, y, 1)
            if key.startswith(METADATA_PREFIX) and key in metadata:
                raise BundleError(
                    f"model.onnx: metadata key {key} appears more than once (byte {at}); the model's binding "
                    "to its labels and tokenizer is ambiguous, re-export it"
                )
            metadata[key] = value
        elif f == 20:
            training_info(x, y, 1)
        elif f == 25:
            function(x, y, 1)

    _each_field(data, 0, len(data), model)
    return ModelInfo(metadata=metadata, external=external, nonfinite=nonfinite)
