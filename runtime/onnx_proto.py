"""A minimal reader of the ONNX protobuf wire format, standard library only (no `onnx` import).

It answers two questions before onnxruntime ever sees a model: what `metadata_props` say (the labels and
tokenizer hash a seqship model was exported with), and whether any tensor, anywhere in the model, points
at external data (a file outside model.onnx that the bundle's manifest never hashed).

The same reader, message for message, is runtime/js/src/onnx_proto.js; tests/test_onnx_proto.py holds
the two to identical answers (and identical error messages) on the same files.

Field numbers, from onnx/onnx.proto (proto2, as onnxruntime compiles it):
  ModelProto: graph=7, metadata_props=14, training_info=20, functions=25
  StringStringEntryProto: key=1, value=2
  GraphProto: node=1, initializer=5, sparse_initializer=15
  NodeProto: attribute=5
  AttributeProto: t=5, g=6, tensors=10, graphs=11, sparse_tensor=22, sparse_tensors=23
  TensorProto: name=8, external_data=13, data_location=14 (enum DataLocation: DEFAULT=0, EXTERNAL=1)
  SparseTensorProto: values=1, indices=2
  FunctionProto: node=7, attribute_proto=11 (attribute=6 is a list of names, input=4 of strings)
  TrainingInfoProto: initialization=1, algorithm=2
Everything else is skipped by its wire type. A field with the right number but another wire type is
skipped, as protobuf itself does (it becomes an unknown field).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from runtime.errors import BundleError

MAX_DEPTH = 64
METADATA_PREFIX = "seqship."


@dataclass(frozen=True)
class ModelInfo:
    """What read_model_info found: metadata_props, and (tensor name, location) of every external tensor."""

    metadata: dict[str, str] = field(default_factory=dict)
    external: list[tuple[str, str]] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)  # float tensors holding NaN or Inf (damaged weights)


def _malformed(what: str) -> BundleError:
    return BundleError(f"model.onnx: not a valid ONNX protobuf ({what}); the file is damaged or not an ONNX model")


Visit = Callable[[int, int, int, int, int], None]


def _each_field(data: bytes, start: int, end: int, visit: Visit) -> None:
    """Call visit(field, wire_type, a, b, at) for each field of the message in data[start:end]:
    wire type 0 gives (value, 0), wire type 2 gives the payload's [a, b); 1 and 5 are skipped."""
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
            visit(number, 0, varint(), 0, at)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if end - pos < size:
                raise _malformed(f"truncated fixed-size field at byte {at}")
            pos += size
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


def read_model_info(data: bytes) -> ModelInfo:
    """Read model.onnx's bytes: its metadata_props and every tensor stored as external data.

    `external` lists every TensorProto anywhere in the model (graph initializers, sparse initializers,
    node attributes, subgraphs, functions, training info) whose data_location is EXTERNAL or that has
    external_data entries, in file order, as (tensor name, location). Raises BundleError (message
    starting "model.onnx: ") on anything that is not valid protobuf, on nesting deeper than MAX_DEPTH
    messages, and on a seqship.* metadata key given twice. Never raises anything else.
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
        state = {"name": "", "external": False, "type": 0, "raw": None, "floats": None}
        entries: list[tuple[str, str]] = []

        def visit(f, w, x, y, at):
            if f == 2 and w == 0:
                state["type"] = x
            elif f == 9 and w == 2:
                state["raw"] = (x, y)
            elif f == 4 and w == 2:  # float_data, packed
                state["floats"] = (x, y)
            elif f == 8 and w == 2:
                state["name"] = text(x, y)
            elif f == 13 and w == 2:
                entries.append(entry(x, y, depth + 1))
            elif f == 14 and w == 0 and x in (0, 1):  # a closed proto2 enum: other values leave it as it was
                state["external"] = x == 1

        _each_field(data, a, b, visit)
        location = ""
        for k, v in entries:
            if k == "location":
                location = v
        if state["external"] or entries:
            external.append((state["name"], location))
        # NaN or Inf weights: onnxruntime's recurrent kernels clamp them into finite garbage, so the outputs
        # alone cannot be trusted to show them. FLOAT, FLOAT16, DOUBLE as raw_data; FLOAT as packed float_data.
        dtype = {1: "<f4", 10: "<f2", 11: "<f8"}.get(state["type"])
        span = state["raw"] if state["raw"] is not None else (state["floats"] if state["type"] == 1 else None)
        if dtype is not None and span is not None:
            size = np.dtype(dtype).itemsize
            a_, b_ = span
            values = np.frombuffer(data, dtype=dtype, count=(b_ - a_) // size, offset=a_)
            if not np.isfinite(values).all():
                nonfinite.append(state["name"])

    def sparse(a: int, b: int, depth: int) -> None:
        enter(depth, a)

        def visit(f, w, x, y, at):
            if w == 2 and f in (1, 2):
                tensor(x, y, depth + 1)

        _each_field(data, a, b, visit)

    def attribute(a: int, b: int, depth: int) -> None:
        enter(depth, a)

        def visit(f, w, x, y, at):
            if w != 2:
                return
            if f in (5, 10):
                tensor(x, y, depth + 1)
            elif f in (6, 11):
                graph(x, y, depth + 1)
            elif f in (22, 23):
                sparse(x, y, depth + 1)

        _each_field(data, a, b, visit)

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

        def visit(f, w, x, y, at):
            if w == 2 and f in (1, 2):
                graph(x, y, depth + 1)

        _each_field(data, a, b, visit)

    def model(f, w, x, y, at):
        if w != 2:
            return
        if f == 7:
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
