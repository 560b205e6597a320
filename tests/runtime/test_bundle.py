"""A bundle is trusted only when every file matches its manifest and stays inside its folder."""

import json
import os

import pytest

from seqship.runtime import BundleError, Predictor
from seqship.runtime.bundle import open_bundle


def edit_manifest(bundle, change):
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def test_an_intact_bundle_loads_and_predicts(bundle_copy):
    p = Predictor.load(bundle_copy, providers="cpu")
    assert p.predict(["Nguyen"])[0].label in p.labels
    assert set(open_bundle(bundle_copy).manifest["files"]) == {"model.onnx", "model.pt", "tokenizer.json", "README.md"}


def test_one_flipped_byte_in_model_onnx_is_caught(bundle_copy):
    path = bundle_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 .* does not match"):
        Predictor.load(bundle_copy)


def test_a_truncated_model_is_caught_by_size(bundle_copy):
    path = bundle_copy / "model.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"model\.onnx: 1000 bytes, the manifest says"):
        Predictor.load(bundle_copy)


@pytest.mark.parametrize("name", ["tokenizer.json", "model.onnx", "model.pt"])
def test_a_missing_file_is_named(bundle_copy, name):
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=rf"{name}: listed in the manifest but missing"):
        Predictor.load(bundle_copy)


def test_manifest_that_is_not_json_or_lacks_keys_or_has_a_newer_version(bundle_copy):
    m = bundle_copy / "manifest.json"
    original = m.read_text()
    m.write_text(original[:-20])
    with pytest.raises(BundleError, match="not valid JSON"):
        Predictor.load(bundle_copy)
    m.write_text(original)
    edit_manifest(bundle_copy, lambda d: d.pop("labels"))
    with pytest.raises(BundleError, match=r"missing keys \['labels'\]"):
        Predictor.load(bundle_copy)
    m.write_text(original)
    edit_manifest(bundle_copy, lambda d: d.update(format_version=3))
    with pytest.raises(BundleError, match="format_version 3 is not supported"):
        Predictor.load(bundle_copy)


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/passwd", "sub/../../x"])
def test_manifest_paths_that_leave_the_bundle_are_refused(bundle_copy, name):
    (bundle_copy.parent / "outside.txt").write_text("x")
    edit_manifest(bundle_copy, lambda d: d["files"].update({name: {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(BundleError, match="outside the bundle folder"):
        Predictor.load(bundle_copy)


def test_a_symlink_pointing_out_of_the_bundle_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    os.replace(bundle_copy / "model.onnx", outside)
    os.symlink(outside, bundle_copy / "model.onnx")
    with pytest.raises(BundleError, match="outside the bundle folder"):
        Predictor.load(bundle_copy)


def test_labels_that_disagree_with_the_model_output_are_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda d: d.update(labels=d["labels"][:-1]))
    with pytest.raises(BundleError, match=r"labels and model disagree"):
        Predictor.load(bundle_copy)


@pytest.mark.parametrize("also_edit_signature", [False, True])
def test_a_tokenizer_that_disagrees_with_the_embedding_is_refused(bundle_copy, also_edit_signature):
    # A tokenizer with more tokens than the embedding has rows, re-hashed into the manifest so only the
    # size checks can catch it: first the manifest's signature, then (signature edited too) a probe of
    # the model itself with the highest token id.
    from seqship.runtime.bundle import file_entry

    tok = bundle_copy / "tokenizer.json"
    spec = json.loads(tok.read_text())
    spec["vocab"] += [f"new-{i}" for i in range(5)]
    tok.write_text(json.dumps(spec))

    def change(d):
        d["files"]["tokenizer.json"] = file_entry(tok)
        if also_edit_signature:
            d["signature"]["vocab_size"] = len(spec["vocab"])

    edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match="tokenizer and model disagree"):
        Predictor.load(bundle_copy)


def test_not_a_bundle_folder(tmp_path):
    with pytest.raises(BundleError, match="manifest.json: missing"):
        Predictor.load(tmp_path)
    with pytest.raises(BundleError, match="bundle folder not found"):
        Predictor.load(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("{}")  # the manifest itself given as the bundle
    with pytest.raises(BundleError, match=rf"a file, not a bundle folder; .*\(perhaps {tmp_path}\)"):
        Predictor.load(tmp_path / "manifest.json")


def test_the_bundle_load_path_never_unpickles(bundle_copy):
    # The runtime reads JSON and ONNX only; prove pickle is never reached while loading and predicting.
    import pickle

    calls = []
    saved = pickle.load, pickle.loads, pickle.Unpickler
    pickle.load = pickle.loads = lambda *a, **k: calls.append(a)
    pickle.Unpickler = lambda *a, **k: calls.append(a)
    try:
        Predictor.load(bundle_copy, providers="cpu").predict(["Nguyen"])
    finally:
        pickle.load, pickle.loads, pickle.Unpickler = saved
    assert calls == []


def test_model_onnx_carries_its_labels_and_tokenizer_hash(bundle_copy):
    # A lone model.onnx still says what it predicts: metadata_props, read with onnxruntime alone.
    import onnxruntime as ort

    from seqship.runtime.tokenizer import Tokenizer

    meta = ort.InferenceSession(str(bundle_copy / "model.onnx"), providers=["CPUExecutionProvider"]).get_modelmeta()
    props = meta.custom_metadata_map
    assert json.loads(props["seqship.labels"]) == json.loads((bundle_copy / "manifest.json").read_text())["labels"]
    assert props["seqship.tokenizer_sha256"] == Tokenizer.from_file(bundle_copy / "tokenizer.json").spec.sha256()


def test_labels_or_tokenizer_swapped_for_same_sized_ones_are_refused(bundle_copy):
    # Same counts, other order: only the model's own metadata can tell (it would answer wrong labels).
    from seqship.runtime.bundle import file_entry

    original = (bundle_copy / "manifest.json").read_text()
    edit_manifest(bundle_copy, lambda d: d.update(labels=d["labels"][::-1]))
    with pytest.raises(BundleError, match="labels and model disagree"):
        Predictor.load(bundle_copy)
    (bundle_copy / "manifest.json").write_text(original)
    tok = bundle_copy / "tokenizer.json"
    spec = json.loads(tok.read_text())
    spec["vocab"] = spec["vocab"][:2] + spec["vocab"][2:][::-1]
    tok.write_text(json.dumps(spec))
    edit_manifest(bundle_copy, lambda d: d["files"].update({"tokenizer.json": file_entry(tok)}))
    with pytest.raises(BundleError, match="not the tokenizer .*model.onnx was exported with"):
        Predictor.load(bundle_copy)
