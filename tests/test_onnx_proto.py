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
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from runtime.errors import BundleError
from runtime.onnx_proto import MAX_DEPTH, ModelInfo, read_model_info

REPO = Path(__file__).resolve().parent.parent
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
    graph = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g", [_vi("x", (64,))], [_vi("y", (64,))], [w])
    return _model(graph, metadata)


def constant_model():
    """No initializer at all: the only tensor is a Constant node's `value` attribute."""
    graph = helper.make_graph([_const("c"), helper.make_node("Add", ["x", "c_out"], ["y"])], "g", [_vi("x")], [_vi("y")])
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
        [_const("body_c"), helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "body_c_out"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), _vi("v_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _vi("v_out")],
    )
    inputs = [helper.make_tensor_value_info("M", TensorProto.INT64, []), helper.make_tensor_value_info("c", TensorProto.BOOL, []), _vi("v0")]
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
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0,
                        convert_attribute=True)
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


def oracle_nonfinite(path):
    """The FLOAT / FLOAT16 / DOUBLE tensors (raw_data, or FLOAT float_data) holding NaN or Inf, per onnx."""
    model = onnx.load(str(path), load_external_data=False)
    found = []

    def tensor(t):
        dtype = {TensorProto.FLOAT: "<f4", TensorProto.FLOAT16: "<f2", TensorProto.DOUBLE: "<f8"}.get(t.data_type)
        if dtype is None:
            return
        if t.raw_data:  # read directly: to_array refuses a tensor flagged external
            values = np.frombuffer(t.raw_data[: len(t.raw_data) // np.dtype(dtype).itemsize * np.dtype(dtype).itemsize], dtype)
        elif t.data_type == TensorProto.FLOAT:
            values = np.array(t.float_data, dtype=np.float32)
        else:
            return
        if not np.isfinite(values).all():
            found.append(t.name)

    def graph(g):
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    tensor(a.t)
                for t in a.tensors:
                    tensor(t)
                if a.HasField("g"):
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)
        for t in g.initializer:
            tensor(t)

    graph(model.graph)
    return found


def python_answer(data: bytes) -> dict:
    try:
        info = read_model_info(data)
    except BundleError as e:
        return {"error": {"name": "BundleError", "message": str(e)}}
    return {"metadata": info.metadata, "external": [{"tensor": t, "location": loc} for t, loc in info.external],
            "nonfinite": list(info.nonfinite)}


def js_answers(paths) -> list[dict]:
    if shutil.which("node") is None:
        pytest.fail("node not found: install Node.js >= 18 (the JavaScript reader is compared with the Python one)")
    out = subprocess.run(["node", str(ONNX_INFO), *map(str, paths)], capture_output=True, text=True, timeout=300, encoding="utf-8")
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
    fn = helper.make_function("custom", "F", ["a"], ["b"], [f_const, helper.make_node("Add", ["a", "f_c_out"], ["b"])], OPSET)
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
    model.graph.initializer.append(numpy_helper.from_array(np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max], dtype=np.float32), "big32"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([np.finfo(np.float16).max], dtype=np.float16), "big16"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([np.finfo(np.float64).max], dtype=np.float64), "big64"))
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


WELL_FORMED = ["inline", "no_metadata", "external_initializer", "external_constant", "external_if", "external_loop",
               "inline_if", "external_sparse", "external_function", "external_training", "flag_only", "entries_only", "dup_other",
               "nonfinite", "nonfinite_in_branch"]


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
    assert all(read_model_info(models[n].read_bytes()).nonfinite == [] for n in WELL_FORMED if not n.startswith("nonfinite"))
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
    with pytest.raises(BundleError, match=rf"^model\.onnx: not a valid ONNX protobuf \(messages nested deeper than {MAX_DEPTH} levels"):
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
    answers = [python_answer(Path(p).read_bytes()) for p in paths[len(WELL_FORMED):]]
    # the generated cases exercise both outcomes, and several kinds of damage
    errors = {a["error"]["message"].split("(")[1].split(" at byte")[0] for a in answers if "error" in a}
    assert sum("error" in a for a in answers) > 100 and sum("metadata" in a for a in answers) > 50
    assert len(errors) >= 4, errors


def test_the_reader_uses_the_standard_library_only():
    tree = ast.parse((REPO / "runtime" / "onnx_proto.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    # numpy (the runtime's own dependency) scans weights for NaN/Inf; never onnx or protobuf
    assert imported <= {"__future__", "dataclasses", "typing", "runtime", "numpy"}, imported
