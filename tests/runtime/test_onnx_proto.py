"""The minimal ONNX protobuf readers (runtime/onnx_proto.py and runtime/js/src/onnx_proto.js) on real ONNX
files built with the `onnx` package: metadata_props as onnx.load reads them, every tensor stored as external
data wherever it sits (initializers, sparse initializers, Constant attributes, If/Loop subgraphs, functions,
training info), and damaged or random bytes refused with a BundleError and nothing else. The JavaScript
reader must give the same answer, error messages included, on every file.

Nothing here skips: a missing `node` fails the test with what to install.
"""

from __future__ import annotations

import ast
import json
import random
import shutil
import struct
import subprocess
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

import seqship.runtime.onnx_proto as onnx_proto
from seqship.runtime.errors import BundleError
from seqship.runtime.onnx_proto import MAX_DEPTH, ModelInfo, read_model_info

REPO = Path(__file__).resolve().parents[2]
ONNX_INFO = REPO / "runtime" / "js" / "tools" / "onnx_info.mjs"
LABELS = json.dumps(["Arabic", "中文", "emoji 🫨", "x"], ensure_ascii=False)
TOKENIZER_SHA = "ab" * 32
META = {"seqship.labels": LABELS, "seqship.tokenizer_sha256": TOKENIZER_SHA, "seqship.version": "0.1.0", "other": "∀ é"}
OPSET = [helper.make_opsetid("", 17)]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- building real models ---------------------------------------------------------------------------


def _vi(name, shape=(2,)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _const(name, value=(1.0, 2.0)):
    tensor = numpy_helper.from_array(np.array(value, dtype=np.float32), name)
    return helper.make_node("Constant", [], [name + "_out"], name=name + "_node", value=tensor)


def _model(graph, metadata=META, **kw):
    model = helper.make_model(graph, opset_imports=OPSET, **kw)
    if metadata:
        helper.set_model_props(model, dict(metadata))
    return model


def add_model(metadata=META):
    """y = x + W, W an initializer."""
    w = numpy_helper.from_array(np.arange(64, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])], "g", [_vi("x", (64,))], [_vi("y", (64,))], [w]
    )
    return _model(graph, metadata)


def constant_model():
    """No initializer at all: the only tensor is a Constant node's `value` attribute."""
    graph = helper.make_graph(
        [_const("c"), helper.make_node("Add", ["x", "c_out"], ["y"])], "g", [_vi("x")], [_vi("y")]
    )
    return _model(graph)


def if_model():
    """The only tensors are Constant attributes inside an If node's two branches."""
    then_g = helper.make_graph([_const("then_c")], "then", [], [_vi("then_c_out")])
    else_g = helper.make_graph([_const("else_c", (3.0, 4.0))], "else", [], [_vi("else_c_out")])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)
    return _model(helper.make_graph([node], "g", [cond], [_vi("y")]))


def loop_model():
    """The only tensor is a Constant attribute inside a Loop body."""
    body = helper.make_graph(
        [
            _const("body_c"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "body_c_out"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            _vi("v_in"),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _vi("v_out")],
    )
    inputs = [
        helper.make_tensor_value_info("M", TensorProto.INT64, []),
        helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        _vi("v0"),
    ]
    node = helper.make_node("Loop", ["M", "c", "v0"], ["v"], body=body)
    return _model(helper.make_graph([node], "g", inputs, [_vi("v")]))


def nested_if_model(levels):
    """If inside If inside If ...: each level nests three more messages (node, attribute, graph)."""
    inner = helper.make_graph([_const("deep")], "inner", [], [_vi("deep_out")])
    for i in range(levels):
        other = helper.make_graph([_const(f"flat{i}")], f"flat{i}", [], [_vi(f"flat{i}_out")])
        node = helper.make_node("If", ["cond"], [f"o{i}"], then_branch=inner, else_branch=other)
        top = i == levels - 1  # the outermost graph takes `cond`; the branches see it from the outer scope
        cond = [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])] if top else []
        inner = helper.make_graph([node], f"level{i}", cond, [_vi(f"o{i}")])
    return _model(inner)


def save(model, path, external=False):
    """external=True: onnx.save_model moves every tensor, node attributes and subgraphs included, to w.bin. Otherwise the model's own bytes are
    written as they are (save_model would try to write out the tensors a test marked external by hand)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="w.bin",
            size_threshold=0,
            convert_attribute=True,
        )
    else:
        path.write_bytes(model.SerializeToString())
    return path


# --- an independent oracle: the onnx package's own protobuf objects ----------------------------------


def oracle(path):
    """What read_model_info must find, computed from onnx.load's objects (protobuf's own parser)."""
    model = onnx.load(str(path), load_external_data=False)
    found = []

    def tensor(t):
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
            location = ""
            for e in t.external_data:
                if e.key == "location":
                    location = e.value
            found.append((t.name, location))

    def sparse(s):
        if s.HasField("values"):
            tensor(s.values)
        if s.HasField("indices"):
            tensor(s.indices)

    def attribute(a):
        if a.HasField("t"):
            tensor(a.t)
        if a.HasField("g"):
            graph(a.g)
        for t in a.tensors:
            tensor(t)
        for g in a.graphs:
            graph(g)
        if a.HasField("sparse_tensor"):
            sparse(a.sparse_tensor)
        for s in a.sparse_tensors:
            sparse(s)

    def graph(g):
        for n in g.node:
            for a in n.attribute:
                attribute(a)
        for t in g.initializer:
            tensor(t)
        for s in g.sparse_initializer:
            sparse(s)

    graph(model.graph)
    for info in model.training_info:
        graph(info.initialization)
        graph(info.algorithm)
    for f in model.functions:
        for n in f.node:
            for a in n.attribute:
                attribute(a)
        for a in f.attribute_proto:
            attribute(a)
    metadata = {p.key: p.value for p in model.metadata_props}
    return metadata, found


def _u16(values):
    """int32_data of a FLOAT16 / BFLOAT16 tensor: the low 16 bits of each value are its bit pattern."""
    return np.array([v & 0xFFFF for v in values], dtype=np.uint16)


def oracle_nonfinite(path):
    """The tensors (FLOAT / FLOAT16 / DOUBLE / BFLOAT16: raw_data, float_data, double_data, int32_data) and the
    attributes (f, floats) holding NaN or Inf, per onnx's protobuf objects, which merge every chunk of a
    repeated field however it was written. Tensors inside an attribute come before the attribute itself."""
    model = onnx.load(str(path), load_external_data=False)
    found = []

    def bf16(bits):
        return (bits.astype(np.uint32) << 16).view(np.float32)

    def tensor(t):
        if t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16):
            return
        raw = t.raw_data  # read directly: to_array refuses a tensor flagged external
        size = 8 if t.data_type == TensorProto.DOUBLE else 4 if t.data_type == TensorProto.FLOAT else 2
        raw = raw[: len(raw) // size * size]
        values = [np.array(t.float_data, dtype=np.float32), np.array(t.double_data, dtype=np.float64)]
        if t.data_type == TensorProto.FLOAT:
            values.append(np.frombuffer(raw, "<f4"))
        elif t.data_type == TensorProto.DOUBLE:
            values.append(np.frombuffer(raw, "<f8"))
        elif t.data_type == TensorProto.FLOAT16:
            values += [np.frombuffer(raw, "<f2"), _u16(t.int32_data).view(np.float16)]
        else:
            values += [bf16(np.frombuffer(raw, "<u2")), bf16(_u16(t.int32_data))]
        if not all(np.isfinite(v).all() for v in values):
            found.append(t.name)

    def sparse(s):
        if s.HasField("values"):
            tensor(s.values)
        if s.HasField("indices"):
            tensor(s.indices)

    def attribute(a):
        if a.HasField("t"):
            tensor(a.t)
        if a.HasField("g"):
            graph(a.g)
        for t in a.tensors:
            tensor(t)
        for g in a.graphs:
            graph(g)
        if a.HasField("sparse_tensor"):
            sparse(a.sparse_tensor)
        for s in a.sparse_tensors:
            sparse(s)
        if not np.isfinite(np.array([a.f, *a.floats], dtype=np.float32)).all():
            found.append("attribute " + a.name)

    def graph(g):
        for n in g.node:
            for a in n.attribute:
                attribute(a)
        for t in g.initializer:
            tensor(t)
        for s in g.sparse_initializer:
            sparse(s)

    graph(model.graph)
    for f in model.functions:
        for n in f.node:
            for a in n.attribute:
                attribute(a)
        for a in f.attribute_proto:
            attribute(a)
    return found


def python_answer(data: bytes) -> dict:
    try:
        info = read_model_info(data)
    except BundleError as e:
        return {"error": {"name": "BundleError", "message": str(e)}}
    return {
        "metadata": info.metadata,
        "external": [{"tensor": t, "location": loc} for t, loc in info.external],
        "nonfinite": list(info.nonfinite),
    }


def js_answers(paths) -> list[dict]:
    if shutil.which("node") is None:
        pytest.fail("node not found: install Node.js >= 18 (the JavaScript reader is compared with the Python one)")
    out = subprocess.run(
        ["node", str(ONNX_INFO), *map(str, paths)], capture_output=True, text=True, timeout=300, encoding="utf-8"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == len(paths), out.stderr[-3000:]
    return [json.loads(line) for line in lines]


def assert_same_in_both(paths):
    """Python's answer on each file, and the JavaScript reader's, are identical (order of external too)."""
    for path, js in zip(paths, js_answers(paths)):
        py = python_answer(Path(path).read_bytes())
        if "metadata" in py and "metadata" in js:  # dicts compare without order (JS orders integer-like keys first)
            assert js["metadata"] == py["metadata"], path
            assert js["external"] == py["external"], path
            assert js["nonfinite"] == py["nonfinite"], path
        else:
            assert js == py, path


# --- the tests -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_proto")
    files = {
        "inline": save(add_model(), d / "inline" / "model.onnx"),
        "no_metadata": save(add_model(metadata=None), d / "no_metadata" / "model.onnx"),
        "external_initializer": save(add_model(), d / "external_initializer" / "model.onnx", external=True),
        "external_constant": save(constant_model(), d / "external_constant" / "model.onnx", external=True),
        "external_if": save(if_model(), d / "external_if" / "model.onnx", external=True),
        "external_loop": save(loop_model(), d / "external_loop" / "model.onnx", external=True),
        "inline_if": save(if_model(), d / "inline_if" / "model.onnx"),
    }

    # a sparse initializer whose values point outside the file
    model = add_model()
    values = numpy_helper.from_array(np.array([1.0, 2.0], dtype=np.float32), "sparse_values")
    set_external_data(values, location="sparse.bin")
    indices = numpy_helper.from_array(np.array([0, 3], dtype=np.int64), "sparse_indices")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [8]))
    files["external_sparse"] = save(model, d / "external_sparse" / "model.onnx")

    # a function whose body holds a Constant with external data, and an attribute default with one too
    f_const = _const("f_c")
    set_external_data(f_const.attribute[0].t, location="func.bin")
    default = helper.make_attribute("alpha", numpy_helper.from_array(np.array([5.0], dtype=np.float32), "f_default"))
    set_external_data(default.t, location="default.bin")
    fn = helper.make_function(
        "custom", "F", ["a"], ["b"], [f_const, helper.make_node("Add", ["a", "f_c_out"], ["b"])], OPSET
    )
    fn.attribute_proto.append(default)
    graph = helper.make_graph([helper.make_node("F", ["x"], ["y"], domain="custom")], "g", [_vi("x")], [_vi("y")])
    model = helper.make_model(graph, opset_imports=OPSET + [helper.make_opsetid("custom", 1)], functions=[fn])
    helper.set_model_props(model, META)
    files["external_function"] = save(model, d / "external_function" / "model.onnx")

    # training info: an initialization graph with an external initializer
    model = add_model()
    t = numpy_helper.from_array(np.zeros(2, dtype=np.float32), "train_w")
    set_external_data(t, location="train.bin")
    init_graph = helper.make_graph([], "init", [], [], [t])
    model.training_info.append(helper.make_training_info(helper.make_graph([], "algo", [], []), [], init_graph, []))
    files["external_training"] = save(model, d / "external_training" / "model.onnx")

    # data_location EXTERNAL without any external_data entry, and entries without data_location
    model = add_model()
    model.graph.initializer[0].data_location = TensorProto.EXTERNAL
    files["flag_only"] = save(model, d / "flag_only" / "model.onnx")
    model = add_model()
    entry = model.graph.initializer[0].external_data.add()
    entry.key, entry.value = "location", "entries_only.bin"
    files["entries_only"] = save(model, d / "entries_only" / "model.onnx")

    # NaN / Inf weights, in each storage the reader scans: raw float32, float16, float64, packed float_data,
    # and a Constant inside an If branch; plus finite look-alikes (int32 bits of NaN, the largest floats)
    model = add_model()
    arr = np.arange(64, dtype=np.float32)
    arr[17] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(arr, "W"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, np.inf], dtype=np.float16), "half"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([-np.inf, 0.0], dtype=np.float64), "double"))
    model.graph.initializer.append(helper.make_tensor("packed", TensorProto.FLOAT, [3], [1.0, float("nan"), 2.0]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([0x7FC00000, -1], dtype=np.int32), "int_bits"))
    model.graph.initializer.append(
        numpy_helper.from_array(
            np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max], dtype=np.float32), "big32"
        )
    )
    model.graph.initializer.append(
        numpy_helper.from_array(np.array([np.finfo(np.float16).max], dtype=np.float16), "big16")
    )
    model.graph.initializer.append(
        numpy_helper.from_array(np.array([np.finfo(np.float64).max], dtype=np.float64), "big64")
    )
    files["nonfinite"] = save(model, d / "nonfinite" / "model.onnx")
    model = if_model()
    then_branch = next(a for a in model.graph.node[0].attribute if a.name == "then_branch")
    branch = then_branch.g.node[0].attribute[0].t
    branch.CopyFrom(numpy_helper.from_array(np.array([np.inf, 1.0], dtype=np.float32), branch.name))
    files["nonfinite_in_branch"] = save(model, d / "nonfinite_in_branch" / "model.onnx")

    # metadata: a non-seqship key twice (last wins, as a dict of onnx.load's list would say)
    model = add_model()
    helper.set_model_props(model, {**META, "other": "first"})
    p = model.metadata_props.add()
    p.key, p.value = "other", "second"
    files["dup_other"] = save(model, d / "dup_other" / "model.onnx")
    return files


WELL_FORMED = [
    "inline",
    "no_metadata",
    "external_initializer",
    "external_constant",
    "external_if",
    "external_loop",
    "inline_if",
    "external_sparse",
    "external_function",
    "external_training",
    "flag_only",
    "entries_only",
    "dup_other",
    "nonfinite",
    "nonfinite_in_branch",
]


@pytest.mark.parametrize("name", WELL_FORMED)
def test_metadata_and_external_tensors_match_the_onnx_package(models, name):
    info = read_model_info(models[name].read_bytes())
    assert isinstance(info, ModelInfo)
    metadata, external = oracle(models[name])
    assert info.metadata == metadata
    assert info.external == external
    assert info.nonfinite == oracle_nonfinite(models[name])


def test_the_cases_cover_what_they_claim(models):
    """Guard against a builder that silently stopped making external tensors where the test needs them."""
    ext = {name: read_model_info(models[name].read_bytes()).external for name in WELL_FORMED}
    assert read_model_info(models["inline"].read_bytes()).metadata == META
    assert read_model_info(models["no_metadata"].read_bytes()).metadata == {}
    assert ext["inline"] == [] and ext["inline_if"] == [] and ext["no_metadata"] == []
    assert ext["external_initializer"] == [("W", "w.bin")]
    assert ext["external_constant"] == [("c", "w.bin")]  # only a node attribute: no initializer exists
    assert sorted(ext["external_if"]) == [("else_c", "w.bin"), ("then_c", "w.bin")]
    assert ext["external_loop"] == [("body_c", "w.bin")]
    assert ext["external_sparse"] == [("sparse_values", "sparse.bin")]
    assert sorted(ext["external_function"]) == [("f_c", "func.bin"), ("f_default", "default.bin")]
    assert ext["external_training"] == [("train_w", "train.bin")]
    assert ext["flag_only"] == [("W", "")]
    assert ext["entries_only"] == [("W", "entries_only.bin")]
    assert read_model_info(models["dup_other"].read_bytes()).metadata["other"] == "second"
    assert read_model_info(models["nonfinite"].read_bytes()).nonfinite == ["W", "half", "double", "packed"]
    assert read_model_info(models["nonfinite_in_branch"].read_bytes()).nonfinite == ["then_c"]
    assert all(
        read_model_info(models[n].read_bytes()).nonfinite == [] for n in WELL_FORMED if not n.startswith("nonfinite")
    )
    for name in ("external_constant", "external_if", "external_loop"):  # external data only in node attributes
        assert not onnx.load(str(models[name]), load_external_data=False).graph.initializer
        assert (models[name].parent / "w.bin").is_file()


def test_a_seqship_metadata_key_given_twice_is_refused(tmp_path):
    model = add_model()
    p = model.metadata_props.add()
    p.key, p.value = "seqship.labels", json.dumps(["other", "order"])
    path = save(model, tmp_path / "model.onnx")
    with pytest.raises(BundleError, match=r"^model\.onnx: metadata key seqship\.labels appears more than once"):
        read_model_info(path.read_bytes())
    assert_same_in_both([path])


def test_nesting_deeper_than_the_limit_is_refused(tmp_path):
    shallow = save(nested_if_model(10), tmp_path / "shallow.onnx")
    deep = save(nested_if_model(MAX_DEPTH // 3 + 1), tmp_path / "deep.onnx")
    assert read_model_info(shallow.read_bytes()).external == []
    with pytest.raises(
        BundleError, match=rf"^model\.onnx: not a valid ONNX protobuf \(messages nested deeper than {MAX_DEPTH} levels"
    ):
        read_model_info(deep.read_bytes())
    onnx.checker.check_model(onnx.load(str(deep)))  # a valid model all the same: the limit is ours
    assert_same_in_both([shallow, deep])


@pytest.mark.parametrize(
    "data, why",
    [
        (b"\x08", "truncated varint at byte 1"),  # field 1, varint, nothing follows
        (b"\x3a\x05ab", "a length at byte 1 runs past the end of its message"),  # graph (7) of 5 bytes, 2 given
        (b"\x0b", "wire type 3 (a group, which ONNX never uses) at byte 0"),
        (b"\x0c", "wire type 4 (a group, which ONNX never uses) at byte 0"),
        (b"\x0e", "invalid wire type 6 at byte 0"),
        (b"\x00\x00", "field number 0 at byte 0"),
        (b"\x09\x01\x02", "truncated fixed-size field at byte 0"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "varint longer than 64 bits at byte 1"),
        (b"\x08" + b"\xff" * 9 + b"\x02", "varint longer than 64 bits at byte 1"),
        (b"\x72\x04\x0a\x02\xc3\x28", "a string at byte 4 is not UTF-8"),  # metadata_props key of 2 bad bytes
    ],
)
def test_malformed_protobuf_is_a_bundle_error(tmp_path, data, why):
    with pytest.raises(BundleError) as e:
        read_model_info(data)
    assert str(e.value) == f"model.onnx: not a valid ONNX protobuf ({why}); the file is damaged or not an ONNX model"
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    assert_same_in_both([path])


def test_a_max_size_varint_and_an_empty_file_are_valid_protobuf():
    assert read_model_info(b"").metadata == {}
    assert read_model_info(b"\x08" + b"\xff" * 9 + b"\x01").external == []  # 2**64 - 1 in an unknown field


def test_truncated_models_are_refused_with_a_bundle_error(models):
    data = models["external_if"].read_bytes()
    with pytest.raises(BundleError, match=r"^model\.onnx: not a valid ONNX protobuf"):
        read_model_info(data[:-1])
    for cut in range(0, len(data), 7):  # a cut at a field boundary is valid protobuf: the answer is then partial
        try:
            read_model_info(data[:cut])
        except BundleError as e:
            assert str(e).startswith("model.onnx: ")


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes_give_an_answer_or_a_bundle_error_and_nothing_else(data):
    try:
        assert isinstance(read_model_info(data), ModelInfo)
    except BundleError as e:
        assert str(e).startswith("model.onnx: ")


@SETTINGS
@given(st.data())
def test_damaged_real_models_give_an_answer_or_a_bundle_error_and_nothing_else(models, data):
    raw = bytearray(models[data.draw(st.sampled_from(WELL_FORMED))].read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        assert isinstance(read_model_info(bytes(raw)), ModelInfo)
    except BundleError as e:
        assert str(e).startswith("model.onnx: ")


def test_the_javascript_reader_gives_the_same_answers(models, tmp_path):
    """The same files through both readers: well-formed models, then 600 damaged and random ones."""
    paths = [models[name] for name in WELL_FORMED]
    rng = random.Random(0)
    originals = [models[name].read_bytes() for name in WELL_FORMED]
    for i in range(600):
        kind = i % 3
        if kind == 0:  # random bytes, some starting like a model
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
            if rng.random() < 0.5:
                blob = rng.choice(originals)[: rng.randrange(1, 40)] + blob
        elif kind == 1:  # real models with bytes changed
            raw = bytearray(rng.choice(originals))
            for _ in range(rng.randrange(1, 6)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            blob = bytes(raw)
        else:  # real models cut short
            raw = rng.choice(originals)
            blob = raw[: rng.randrange(len(raw))]
        path = tmp_path / f"blob{i}.onnx"
        path.write_bytes(blob)
        paths.append(path)
    assert_same_in_both(paths)
    answers = [python_answer(Path(p).read_bytes()) for p in paths[len(WELL_FORMED) :]]
    # the generated cases exercise both outcomes, and several kinds of damage
    errors = {a["error"]["message"].split("(")[1].split(" at byte")[0] for a in answers if "error" in a}
    assert sum("error" in a for a in answers) > 100 and sum("metadata" in a for a in answers) > 50
    assert len(errors) >= 4, errors


def test_the_reader_uses_the_standard_library_only():
    tree = ast.parse((REPO / "runtime" / "onnx_proto.py").read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        "seqship.runtime" if node.module.startswith("seqship.runtime.") else node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    # numpy (the runtime's own dependency) scans weights for NaN/Inf; never onnx or protobuf
    assert imported <= {"__future__", "dataclasses", "typing", "seqship.runtime", "numpy"}, imported


# --- non-finite values in every encoding protobuf allows --------------------------------------------------
# onnx's serializer writes each repeated field one way (TensorProto's packed, AttributeProto.floats unpacked);
# protobuf parsers, onnxruntime's included, accept any mix of packed and unpacked chunks. These files are
# written byte by byte where onnx would not write them so, and appended to a real model: protobuf merges a
# second `graph` field into the first, so the extra initializer or node is part of the model's graph.

NAN, INF = float("nan"), float("inf")
FLOAT, FLOAT16, DOUBLE, BFLOAT16, INT32 = (
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.DOUBLE,
    TensorProto.BFLOAT16,
    TensorProto.INT32,
)


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int32 is written as its 64-bit two's complement: ten bytes
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def fld(number: int, wire: int, payload) -> bytes:
    """One field: wire 0 takes an int, 2 the payload's bytes, 1 and 5 their 8 or 4 fixed bytes."""
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 2:
        return key + varint(len(payload)) + payload
    assert len(payload) == (8 if wire == 1 else 4)
    return key + payload


def f32(*v) -> bytes:
    return struct.pack(f"<{len(v)}f", *v)


def f64(*v) -> bytes:
    return struct.pack(f"<{len(v)}d", *v)


def u16(*v) -> bytes:
    return struct.pack(f"<{len(v)}H", *v)


def packed(*v) -> bytes:
    return b"".join(varint(x) for x in v)


def tensor_pb(name: str, data_type: int, *fields: bytes) -> bytes:
    """A TensorProto: dims, data_type, name, then the given data fields (in that order)."""
    return fld(1, 0, 1) + fld(2, 0, data_type) + fld(8, 2, name.encode()) + b"".join(fields)


def _graph_plus(extra: bytes) -> bytes:
    """add_model() with `extra` GraphProto fields inside its one graph (a second graph field is refused)."""
    model = add_model()
    graph = model.graph.SerializeToString()
    model.ClearField("graph")
    return model.SerializeToString() + fld(7, 2, graph + extra)


def with_initializer(tensor: bytes) -> bytes:
    return _graph_plus(fld(5, 2, tensor))


def with_attribute(attribute: bytes) -> bytes:
    node = fld(1, 2, b"x") + fld(2, 2, b"z") + fld(4, 2, b"Identity") + fld(5, 2, attribute)
    return _graph_plus(fld(1, 2, node))


def attribute_pb(name, *fields: bytes) -> bytes:
    return (fld(1, 2, name.encode()) if name is not None else b"") + b"".join(fields)


def _attribute_in_if_branch():
    model = if_model()
    then_branch = next(a for a in model.graph.node[0].attribute if a.name == "then_branch")
    then_branch.g.node.append(helper.make_node("LeakyRelu", ["then_c_out"], ["leaky"], alpha=INF))
    return model.SerializeToString()


def _attribute_default_in_function():
    fn = helper.make_function("custom", "F", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])], OPSET)
    fn.attribute_proto.append(helper.make_attribute("beta", NAN))
    graph = helper.make_graph([helper.make_node("F", ["x"], ["y"], domain="custom")], "g", [_vi("x")], [_vi("y")])
    model = helper.make_model(graph, opset_imports=OPSET + [helper.make_opsetid("custom", 1)], functions=[fn])
    return model.SerializeToString()


# name -> (the model's bytes, what `nonfinite` must say)
ENCODINGS = {
    # float_data (4): unpacked (wire 5), several packed chunks, packed and unpacked mixed
    "float_data unpacked": (
        with_initializer(tensor_pb("fu", FLOAT, fld(4, 5, f32(1)), fld(4, 5, f32(NAN)), fld(4, 5, f32(2)))),
        ["fu"],
    ),
    "float_data in packed chunks": (
        with_initializer(tensor_pb("fc", FLOAT, fld(4, 2, f32(1, 2)), fld(4, 2, f32(3, INF)))),
        ["fc"],
    ),
    "float_data mixed": (with_initializer(tensor_pb("fm", FLOAT, fld(4, 2, f32(1, 2)), fld(4, 5, f32(-INF)))), ["fm"]),
    "float_data finite": (
        with_initializer(tensor_pb("ff", FLOAT, fld(4, 2, f32(1, 3.4e38)), fld(4, 5, f32(-3.4e38)))),
        [],
    ),
    # double_data (10): packed as onnx writes it, unpacked (wire 1), several chunks
    "double_data packed": (
        with_initializer(helper.make_tensor("dp", DOUBLE, [2], [1.0, -INF]).SerializeToString()),
        ["dp"],
    ),
    "double_data unpacked": (
        with_initializer(tensor_pb("du", DOUBLE, fld(10, 1, f64(1)), fld(10, 1, f64(NAN)))),
        ["du"],
    ),
    "double_data in chunks": (
        with_initializer(tensor_pb("dc", DOUBLE, fld(10, 2, f64(1, 2)), fld(10, 2, f64(INF)))),
        ["dc"],
    ),
    "double_data finite": (
        with_initializer(tensor_pb("df", DOUBLE, fld(10, 2, f64(1.7e308)), fld(10, 1, f64(-1.7e308)))),
        [],
    ),
    # int32_data (5) of FLOAT16: packed as onnx writes it, unpacked (wire 0), chunks; only the low 16 bits count
    "float16 int32_data packed": (
        with_initializer(helper.make_tensor("hp", FLOAT16, [2], [1.0, INF]).SerializeToString()),
        ["hp"],
    ),
    "float16 int32_data unpacked": (
        with_initializer(tensor_pb("hu", FLOAT16, fld(5, 0, 0x3C00), fld(5, 0, 0x7E00))),
        ["hu"],
    ),
    "float16 int32_data in chunks": (
        with_initializer(tensor_pb("hc", FLOAT16, fld(5, 2, packed(0x3C00, 0)), fld(5, 2, packed(0xFC00)))),
        ["hc"],
    ),
    "float16 int32_data negative": (
        with_initializer(tensor_pb("hn", FLOAT16, fld(5, 0, -1))),
        ["hn"],
    ),  # ten bytes; low 16 bits 0xFFFF
    "float16 int32_data high bits": (with_initializer(tensor_pb("hh", FLOAT16, fld(5, 2, packed(0x17C00)))), ["hh"]),
    "float16 int32_data finite": (
        with_initializer(
            tensor_pb(
                "hf",
                FLOAT16,
                fld(5, 2, packed(0x7BFF, 0xFBFF, 0x13C00)),
                fld(5, 0, -0x10000 + 0x3C00),
                fld(5, 2, packed(-0x10000 + 0x7BFF)),
            )
        ),
        [],
    ),
    "float16 float_data": (with_initializer(tensor_pb("hfd", FLOAT16, fld(4, 5, f32(NAN)))), ["hfd"]),
    # BFLOAT16: int32_data in every encoding, and raw_data
    "bfloat16 int32_data packed": (
        with_initializer(helper.make_tensor("bp", BFLOAT16, [2], [1.0, NAN]).SerializeToString()),
        ["bp"],
    ),
    "bfloat16 int32_data unpacked": (
        with_initializer(tensor_pb("bu", BFLOAT16, fld(5, 0, 0x3F80), fld(5, 0, 0xFF80))),
        ["bu"],
    ),
    "bfloat16 int32_data in chunks": (
        with_initializer(tensor_pb("bc", BFLOAT16, fld(5, 2, packed(0x3F80)), fld(5, 2, packed(0x7FC0)))),
        ["bc"],
    ),
    "bfloat16 int32_data finite": (
        with_initializer(tensor_pb("bf", BFLOAT16, fld(5, 2, packed(0x7F7F, 0xFF7F, 0x7C00)))),
        [],
    ),
    "bfloat16 raw_data": (with_initializer(tensor_pb("br", BFLOAT16, fld(9, 2, u16(0x3F80, 0x7F80)))), ["br"]),
    "bfloat16 raw_data finite": (
        with_initializer(tensor_pb("brf", BFLOAT16, fld(9, 2, u16(0x7F7F, 0xFF7F, 0x7C00)))),
        [],
    ),
    "float16 raw_data": (with_initializer(tensor_pb("hr", FLOAT16, fld(9, 2, u16(0x3C00, 0x7C01)))), ["hr"]),
    # what is not a float, and which data_type / raw_data protobuf keeps
    "int32 bit patterns": (
        with_initializer(tensor_pb("ints", INT32, fld(5, 2, packed(0x7C00, 0x7F80, 0xFFFF)), fld(5, 0, -1))),
        [],
    ),
    "int32 holding float_data": (with_initializer(tensor_pb("intf", INT32, fld(4, 5, f32(NAN)))), []),
    "data_type above 32 bits": (with_initializer(tensor_pb("wide", 2**32 + FLOAT, fld(9, 2, f32(NAN)))), ["wide"]),
    "data_type INT64 above 32 bits": (
        with_initializer(tensor_pb("wide64", 2**32 + TensorProto.INT64, fld(9, 2, f32(NAN, NAN)))),
        [],
    ),
    "data_type after the data": (
        with_initializer(fld(8, 2, b"late") + fld(4, 2, f32(NAN)) + fld(2, 0, FLOAT)),
        ["late"],
    ),
    "data_type given twice": (
        with_initializer(  # FLOAT, then FLOAT16: two bytes are no float32, but a float16 Inf
            fld(8, 2, b"retyped") + fld(2, 0, FLOAT) + fld(9, 2, u16(0x7C00)) + fld(2, 0, FLOAT16)
        ),
        ["retyped"],
    ),
    "raw_data twice, NaN last": (
        with_initializer(tensor_pb("r2", FLOAT, fld(9, 2, f32(1)), fld(9, 2, f32(NAN)))),
        ["r2"],
    ),
    "raw_data twice, NaN replaced": (
        with_initializer(tensor_pb("r1", FLOAT, fld(9, 2, f32(NAN)), fld(9, 2, f32(1)))),
        [],
    ),
    # attributes: f (2), floats (7) unpacked as onnx writes them, packed chunks, mixed
    "attribute f": (with_attribute(helper.make_attribute("alpha", NAN).SerializeToString()), ["attribute alpha"]),
    "attribute floats unpacked": (
        with_attribute(helper.make_attribute("scales", [1.0, INF]).SerializeToString()),
        ["attribute scales"],
    ),
    "attribute floats in packed chunks": (
        with_attribute(attribute_pb("ps", fld(7, 2, f32(1, 2)), fld(7, 2, f32(NAN)), fld(20, 0, 6))),
        ["attribute ps"],
    ),
    "attribute floats mixed": (
        with_attribute(attribute_pb("mx", fld(7, 2, f32(1)), fld(7, 5, f32(-INF)), fld(20, 0, 6))),
        ["attribute mx"],
    ),
    "attribute finite": (
        with_attribute(attribute_pb("ok", fld(2, 5, f32(3.4e38)), fld(7, 2, f32(-3.4e38, 0)), fld(7, 5, f32(1)))),
        [],
    ),
    "attribute name after the value": (
        with_attribute(fld(2, 5, f32(INF)) + fld(1, 2, b"late_name")),
        ["attribute late_name"],
    ),
    "attribute without a name": (with_attribute(attribute_pb(None, fld(2, 5, f32(NAN)))), ["attribute "]),
    "attribute with a tensor": (
        with_attribute(
            attribute_pb(
                "both", fld(5, 2, tensor_pb("inner", FLOAT, fld(9, 2, f32(INF)))), fld(2, 5, f32(NAN)), fld(20, 0, 1)
            )
        ),
        ["inner", "attribute both"],
    ),
    "attribute in an If branch": (_attribute_in_if_branch(), ["attribute alpha"]),
    "attribute default in a function": (_attribute_default_in_function(), ["attribute beta"]),
}


@pytest.fixture(scope="module")
def encodings(tmp_path_factory):
    d = tmp_path_factory.mktemp("encodings")
    paths = {}
    for i, (name, (data, _)) in enumerate(ENCODINGS.items()):
        paths[name] = d / f"{i}.onnx"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_nonfinite_values_are_found_in_every_encoding(encodings, name):
    data, expected = ENCODINGS[name]
    assert read_model_info(data).nonfinite == expected
    assert sorted(oracle_nonfinite(encodings[name])) == sorted(expected)  # protobuf's own reading agrees


def test_the_javascript_reader_finds_the_same_nonfinite_values(encodings):
    assert_same_in_both(list(encodings.values()))
    assert [js["nonfinite"] for js in js_answers(list(encodings.values()))] == [e for _, e in ENCODINGS.values()]


def test_data_location_keeps_the_low_32_bits_as_protobuf_does(tmp_path):
    """data_location 2**32 + 1 is EXTERNAL to protobuf (an int32 enum): the reader must say so too."""
    paths = []
    for i, value in enumerate([2**32 + 1, 2**32, 2, -1]):
        path = tmp_path / f"{i}.onnx"
        path.write_bytes(with_initializer(tensor_pb("loc", FLOAT, fld(9, 2, f32(1)), fld(14, 0, value))))
        paths.append(path)
    got = [read_model_info(p.read_bytes()).external for p in paths]
    assert got == [oracle(p)[1] for p in paths] == [[("loc", "")], [], [], []]
    assert_same_in_both(paths)


def test_malformed_packed_int32_data_is_refused_alike(tmp_path):
    """Packed varints are decoded (always: a bad one is bad protobuf, whatever the tensor's type)."""
    cases = {
        "truncated": (tensor_pb("m", FLOAT16, fld(5, 2, packed(1, 2) + b"\x80\x80")), "truncated varint"),
        "too long": (
            tensor_pb("m", INT32, fld(5, 2, packed(1) + b"\xff" * 10 + b"\x01")),
            "varint longer than 64 bits",
        ),
        "ten bytes, last above 1": (
            tensor_pb("m", FLOAT16, fld(5, 2, b"\xff" * 9 + b"\x02")),
            "varint longer than 64 bits",
        ),
        "ten bytes open": (tensor_pb("m", BFLOAT16, fld(5, 2, b"\xff" * 10)), "varint longer than 64 bits"),
        "nine bytes open": (tensor_pb("m", BFLOAT16, fld(5, 2, b"\xff" * 9)), "truncated varint"),
    }
    paths = []
    for i, (tensor, why) in enumerate(cases.values()):
        data = with_initializer(tensor)
        with pytest.raises(BundleError, match=rf"^model\.onnx: not a valid ONNX protobuf \({why} at byte \d+\)"):
            read_model_info(data)
        paths.append(tmp_path / f"{i}.onnx")
        paths[-1].write_bytes(data)
    assert read_model_info(with_initializer(tensor_pb("m", FLOAT16, fld(5, 2, b"\xff" * 9 + b"\x01")))).nonfinite == [
        "m"
    ]  # 2**64 - 1
    assert_same_in_both(paths)


def _sequential_16bit(data: bytes):
    """The reference: varint by varint, as the JavaScript reader does."""
    f16 = bf16 = False
    pos = 0
    while pos < len(data):
        at, low = pos, 0
        for i in range(11):
            if pos >= len(data):
                return f"truncated varint at byte {at}"
            c = data[pos]
            pos += 1
            if i == 9 and c > 1:
                return f"varint longer than 64 bits at byte {at}"
            low |= (c & 0x7F) << (7 * i)
            if c < 0x80:
                break
        f16 = f16 or (low & 0x7C00) == 0x7C00
        bf16 = bf16 or (low & 0x7F80) == 0x7F80
    return f16, bf16


def _scanned_16bit(scan, data: bytes):
    try:
        return scan(data, 0, len(data))
    except BundleError as e:
        return str(e).split("(", 1)[1].rsplit(");", 1)[0]


@SETTINGS
@given(
    st.lists(
        st.one_of(st.integers(0, 2**16 - 1), st.integers(-(2**31), 2**64 - 1), st.binary(max_size=12)), max_size=40
    )
)
def test_the_packed_varint_scan_matches_a_varint_by_varint_reading(parts):
    """Both scans of packed int32_data (numpy's, in blocks of any size, and the one for short payloads)
    answer as reading one varint at a time."""
    data = b"".join(varint(p) if isinstance(p, int) else p for p in parts)
    expected = _sequential_16bit(data)
    assert _scanned_16bit(onnx_proto._nonfinite_16bit_varints_one_by_one, data) == expected
    assert _scanned_16bit(onnx_proto._nonfinite_16bit_varints, data) == expected
    for block in (10, 11, 16, 1 << 20):
        with mock.patch.object(onnx_proto, "_BLOCK", block):
            assert _scanned_16bit(onnx_proto._nonfinite_16bit_varints_numpy, data) == expected, block


def test_large_and_random_packed_int32_data_read_alike(tmp_path):
    """Payloads over numpy's block size (a varint straddling blocks), and random ones, in both readers."""
    rng = random.Random(1)
    paths = []
    big = packed(*(rng.randrange(0x7C00) for _ in range(600_000)))  # about 1.7 MB of finite float16 patterns
    variants = [
        big,
        big + packed(0x7C00),
        big + b"\x80\x80",
        big[: (1 << 20) - 1] + b"\xff" * 12 + big[(1 << 20) - 1 :],
    ]
    for _ in range(150):
        variants.append(
            bytes(rng.choice([rng.randrange(256), 0xFF, 0x80, 0x7C, 0x01]) for _ in range(rng.randrange(0, 40)))
        )
    for i, payload in enumerate(variants):
        path = tmp_path / f"{i}.onnx"
        data_type = FLOAT16 if i < 4 else rng.choice([FLOAT16, BFLOAT16, INT32])
        path.write_bytes(with_initializer(tensor_pb("p", data_type, fld(5, 2, payload))))
        paths.append(path)
    assert [python_answer(p.read_bytes()).get("nonfinite") for p in paths[:2]] == [[], ["p"]]
    assert "truncated varint" in python_answer(paths[2].read_bytes())["error"]["message"]
    assert "varint longer than 64 bits at byte" in python_answer(paths[3].read_bytes())["error"]["message"]
    assert_same_in_both(paths)
    answers = [python_answer(p.read_bytes()) for p in paths[4:]]
    assert sum("error" in a for a in answers) > 10 and sum(a.get("nonfinite") == ["p"] for a in answers) > 10


def test_a_single_valued_message_split_in_two_is_refused_alike(tmp_path):
    # protobuf merges a singular message field given twice: one part holding NaN data with no type and
    # another holding the type with no data each look clean alone, but merge into a NaN weight (a reviewer
    # slipped one past both readers this way). Every such split is refused, in Python and JavaScript.
    nan_data = fld(9, 2, f32(NAN, 1.0))  # raw_data only, no data_type
    typed = fld(1, 0, 2) + fld(2, 0, 1) + fld(8, 2, b"w")  # dims, FLOAT, name, no data
    sparse_split = fld(1, 2, nan_data) + fld(1, 2, typed) + fld(2, 2, tensor_pb("i", 7, fld(7, 2, packed(0))))
    cases = {
        "sparse values": _graph_plus(fld(15, 2, sparse_split)),
        "second graph": add_model().SerializeToString() + fld(7, 2, fld(5, 2, tensor_pb("w", 1, fld(9, 2, f32(NAN))))),
        "attribute t": with_attribute(attribute_pb("value", fld(5, 2, nan_data), fld(5, 2, typed), fld(20, 0, 4))),
    }
    paths = []
    for name, data in cases.items():
        with pytest.raises(BundleError, match="appears twice"):
            read_model_info(data)
        paths.append(tmp_path / f"{name.replace(' ', '_')}.onnx")
        paths[-1].write_bytes(data)
    for js in js_answers(paths):
        assert js["error"]["name"] == "BundleError" and "appears twice" in js["error"]["message"], js
