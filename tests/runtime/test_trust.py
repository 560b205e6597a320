"""One trust model in every consumer: each way of tampering with a bundle is refused, with the runtime's
typed error, by the Python predictor, the Node predictor and the browser loader (fetching the bundle over
HTTP, onnxruntime-web) alike; a pinned digest pins everything.

Each case edits a private copy of the tiny run's bundle the way an attacker or an accident would, and
re-hashes whatever the manifest lists, so that the sha256 checks alone cannot catch it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from seqship.runtime import BundleError, InputError, ModelOutputError, Predictor, TokenizerError
from seqship.runtime.tokenizer import TokenizerSpec

JS = Path(__file__).resolve().parents[2] / "runtime" / "js"


def rehash(bundle: Path) -> None:
    """Make the manifest list the files as they are now (what someone who rewrites a bundle would do)."""
    m = json.loads((bundle / "manifest.json").read_text())
    for name in m["files"]:
        data = (bundle / name).read_bytes()
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(m, indent=1, ensure_ascii=False) + "\n")


def edit_manifest(bundle: Path, fn) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    fn(m)
    (bundle / "manifest.json").write_text(json.dumps(m, indent=1, ensure_ascii=False) + "\n")


def edit_model(bundle: Path, fn, **save) -> None:
    proto = onnx.load(str(bundle / "model.onnx"))
    fn(proto)
    onnx.save(proto, str(bundle / "model.onnx"), **save)


def set_meta(proto, key, value) -> None:
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value


def node_load(bundle: Path, *args: str, texts: list | None = None, tmp: Path | None = None) -> dict:
    if not (JS / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail(
            "runtime/js/node_modules is missing: npm ci --prefix runtime/js --ignore-scripts (these tests never skip)"
        )
    cmd = ["node", str(JS / "tools" / "load_check.mjs"), str(bundle), *args]
    if texts is not None:
        (tmp / "texts.json").write_text(json.dumps(texts))
        cmd += ["--texts", str(tmp / "texts.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def served(bundle_copy):
    """The bundle copy over HTTP on localhost (a secure context, as the browser loader needs): its URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(bundle_copy)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def swap_labels(m):
    m["labels"][0], m["labels"][1] = m["labels"][1], m["labels"][0]


def strip_metadata_and_swap(bundle: Path):
    edit_model(bundle, lambda p: p.ClearField("metadata_props"))
    edit_manifest(bundle, swap_labels)
    rehash(bundle)


def swap_metadata_labels(bundle: Path):
    def fn(p):
        labels = json.loads(next(x.value for x in p.metadata_props if x.key == "seqship.labels"))
        labels[0], labels[1] = labels[1], labels[0]
        set_meta(p, "seqship.labels", json.dumps(labels))

    edit_model(bundle, fn)
    edit_manifest(bundle, swap_labels)
    rehash(bundle)


def swap_vocab(bundle: Path):
    spec = json.loads((bundle / "tokenizer.json").read_text())
    spec["vocab"][2], spec["vocab"][3] = spec["vocab"][3], spec["vocab"][2]
    (bundle / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, sort_keys=True, indent=1) + "\n")
    rehash(bundle)


def external_data(bundle: Path):
    edit_model(
        bundle,
        lambda p: None,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    rehash(bundle)  # weights.bin is not listed: it would load unchecked


def nan_weights(bundle: Path):
    def fn(p):
        init = max(p.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the embedding or a recurrent W
        arr = numpy_helper.to_array(init).copy()
        arr[...] = np.nan
        init.CopyFrom(numpy_helper.from_array(arr, init.name))

    edit_model(bundle, fn)
    rehash(bundle)


def old_format(bundle: Path):
    edit_manifest(bundle, lambda m: m.update(format_version=1))


def flip_model_pt(bundle: Path):  # a file no ONNX consumer runs: a bundle still loads only when whole
    data = bytearray((bundle / "model.pt").read_bytes())
    data[len(data) // 2] ^= 1
    (bundle / "model.pt").write_bytes(bytes(data))


# case -> (how to tamper, the error both runtimes must raise, words their messages share)
CASES = {
    "manifest labels reordered": (lambda b: edit_manifest(b, swap_labels), BundleError, "labels"),
    "metadata stripped, labels reordered": (strip_metadata_and_swap, BundleError, "seqship.labels"),
    "model metadata and manifest both reordered": (swap_metadata_labels, None, None),
    "tokenizer.json replaced, manifest re-hashed": (swap_vocab, BundleError, "tokenizer"),
    "external weights file not in the manifest": (external_data, BundleError, "external"),
    "NaN weights, manifest re-hashed": (nan_weights, BundleError, "non-finite"),
    "format_version 1": (old_format, BundleError, "format_version"),
    "model.pt altered": (flip_model_pt, BundleError, "sha256"),
    "README.md missing": (lambda b: (b / "README.md").unlink(), BundleError, ("missing", "404")),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_every_consumer_refuses_the_same_tampered_bundles(bundle_copy, served, tmp_path, case):
    tamper, error, words = CASES[case]
    local_words, web_words = words if isinstance(words, tuple) else (words, words)
    tamper(bundle_copy)
    node, web = node_load(bundle_copy), node_load(served)
    if error is None:
        # Labels swapped consistently in the hashed model and the manifest are a different, consistent
        # model (the weights still say the old order): only a pinned digest catches this one, below.
        Predictor.load(bundle_copy, providers="cpu")
        assert node["ok"] and web["ok"], (node, web)
        return
    with pytest.raises(error) as e:
        Predictor.load(bundle_copy, providers="cpu")
    assert local_words.lower() in str(e.value).lower()
    for consumer, got, want in (("Node", node, local_words), ("the browser loader", web, web_words)):
        assert not got["ok"], f"{consumer} loaded a bundle Python refuses ({case})"
        assert got["error"]["name"] == error.__name__, got
        assert want.lower() in got["error"]["message"].lower(), got


def test_a_pinned_digest_pins_the_whole_bundle_in_python_and_node(tiny_run, bundle_copy):
    digest = hashlib.sha256((bundle_copy / "manifest.json").read_bytes()).hexdigest()
    p = Predictor.load(bundle_copy, providers="cpu", expected_sha256=digest.upper())
    assert p.digest == digest
    node = node_load(bundle_copy, "--expect-sha256", digest)
    assert node["ok"] and node["digest"] == digest
    # A consistent rewrite (labels reordered in the model's metadata and the manifest, all re-hashed)
    # passes every internal check; against the pinned digest it is refused everywhere.
    swap_metadata_labels(bundle_copy)
    with pytest.raises(BundleError, match="not the trusted"):
        Predictor.load(bundle_copy, providers="cpu", expected_sha256=digest)
    node = node_load(bundle_copy, "--expect-sha256", digest)
    assert not node["ok"] and node["error"]["name"] == "BundleError" and digest in node["error"]["message"]
    for bad in ("abc", "g" * 64, ""):
        with pytest.raises(BundleError, match="64 hex"):
            Predictor.load(bundle_copy, providers="cpu", expected_sha256=bad)
        node = (
            node_load(bundle_copy, "--expect-sha256", bad) if bad else {"ok": False, "error": {"name": "BundleError"}}
        )
        assert not node["ok"] and node["error"]["name"] == "BundleError"


def test_the_cli_pins_with_expect_sha256(tiny_run):
    from tests.conftest import invoke

    bundle = tiny_run[1]["bundle"]
    digest = hashlib.sha256((Path(bundle) / "manifest.json").read_bytes()).hexdigest()
    ok = invoke("predict", "--bundle", bundle, "--expect-sha256", digest, "Nguyen")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["label"]
    bad = invoke("predict", "--bundle", bundle, "--expect-sha256", "0" * 64, "Nguyen")
    assert bad.exit_code == 1 and "not the trusted" in bad.output
    shown = invoke("inspect", bundle)
    assert digest in shown.stdout


def test_non_finite_logits_are_a_typed_error_never_a_score(bundle_copy, tmp_path):
    # Predictor.load refuses Inf weights by reading the file; a Predictor built from loose files (as the
    # gate builds one) has only its outputs to go by, so every result is checked too.
    from seqship.runtime.bulk import score_file
    from seqship.runtime.tokenizer import Tokenizer

    def fn(p):
        bias = next(
            t
            for t in p.graph.initializer
            if list(t.dims) == [len(json.loads((bundle_copy / "manifest.json").read_text())["labels"])]
        )
        arr = numpy_helper.to_array(bias).copy()
        arr[:] = np.inf
        bias.CopyFrom(numpy_helper.from_array(arr, bias.name))

    edit_model(bundle_copy, fn)
    rehash(bundle_copy)
    with pytest.raises(BundleError, match="non-finite"):
        Predictor.load(bundle_copy, providers="cpu")
    m = json.loads((bundle_copy / "manifest.json").read_text())
    p = Predictor(
        (bundle_copy / "model.onnx").read_bytes(),
        Tokenizer.from_file(bundle_copy / "tokenizer.json"),
        m["labels"],
        "cpu",
    )
    logits = p.model.run(*p.tokenizer.encode_batch(["Nguyen", "Ng"])[:2])
    assert not np.isfinite(logits).all()  # the premise: this model really answers inf/NaN
    out = p.predict(["Nguyen", ""], errors="return")
    assert isinstance(out[0], ModelOutputError) and out[0].index == 0 and isinstance(out[1], InputError)
    with pytest.raises(ModelOutputError):
        p.predict(["Nguyen"])
    with pytest.raises(ModelOutputError):
        p.logits(["Nguyen", "Ng"])
    (tmp_path / "in.txt").write_text("Nguyen\nSchmidt\n")
    score_file(p, tmp_path / "in.txt", tmp_path / "out.jsonl")

    def strict(token):  # bare NaN / Infinity are not JSON: other languages' parsers reject the file
        raise AssertionError(f"bulk output holds {token}")

    rows = [json.loads(line, parse_constant=strict) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("error" in r and "non-finite" in r["error"] and "score" not in r for r in rows)
    node = node_load(bundle_copy)
    assert not node["ok"] and node["error"]["name"] == "BundleError" and "non-finite" in node["error"]["message"]


def retokenize(bundle: Path, **changes) -> None:
    """Rewrite tokenizer.json with changes and bind it again (model metadata, manifest): a consistent bundle."""
    spec = TokenizerSpec.from_json((bundle / "tokenizer.json").read_text())
    text = dataclasses.replace(spec, **changes).to_json()
    (bundle / "tokenizer.json").write_text(text, encoding="utf-8")
    edit_model(
        bundle, lambda p, text=text: set_meta(p, "seqship.tokenizer_sha256", hashlib.sha256(text.encode()).hexdigest())
    )
    rehash(bundle)


def test_a_unicode_version_mismatch_refuses_exactly_the_texts_whose_ids_could_differ(bundle_copy, tmp_path):
    # A tokenizer recorded as built with Unicode 13.0: this Python has 14.0 and Node 17.0. U+1FAE8 is
    # unassigned in 14.0 (and 13.0); U+0870 (Arabic, new in 14.0) is unassigned in 13.0.
    from seqship.runtime.tokenizer import unassigned_ranges

    retokenize(bundle_copy, unicode_version="13.0.0", unassigned=unassigned_ranges())
    texts = ["Nguyen", "Müller", "a\U0001fae8", "\u4e2d\u6587"]
    p = Predictor.load(bundle_copy, providers="cpu")
    out = p.predict(texts, errors="return")
    assert isinstance(out[2], InputError) and "U+1FAE8" in str(out[2]) and "13.0.0" in str(out[2])
    assert [type(r).__name__ for i, r in enumerate(out) if i != 2] == ["Prediction"] * 3
    node = node_load(bundle_copy, texts=texts, tmp=tmp_path)
    assert node["ok"], node
    assert (
        node["predictions"][2]["error"]["name"] == "InputError"
        and "U+1FAE8" in node["predictions"][2]["error"]["message"]
    )
    assert [r["label"] for i, r in enumerate(node["predictions"]) if i != 2] == [
        r.label for i, r in enumerate(out) if i != 2
    ]
    # By explicit choice, a mismatch only warns and everything is scored.
    lenient = Predictor.load(bundle_copy, providers="cpu", unicode_mismatch="warn")
    assert not isinstance(lenient.predict(texts, errors="return")[2], Exception)
    node = node_load(bundle_copy, "--unicode-mismatch", "warn", texts=texts, tmp=tmp_path)
    assert "label" in node["predictions"][2]


def test_the_spec_records_this_runtimes_unicode_version_and_its_unassigned_code_points(tiny_run):
    import unicodedata

    spec = json.loads((Path(tiny_run[1]["bundle"]) / "tokenizer.json").read_text())
    assert spec["format_version"] == 2 and spec["unicode_version"] == unicodedata.unidata_version
    starts_ends = [tuple(int(x, 16) for x in r.split("-")) for r in spec["unassigned"].split(" ")]
    for c in (0x378, 0x1FAE8, 0x10FFFF, 0x41, 0x4E2D):
        listed = any(lo <= c <= hi for lo, hi in starts_ends)
        assert listed == (unicodedata.category(chr(c)) == "Cn"), hex(c)


def test_malformed_tokenizer_fields_are_refused_in_python_and_node(bundle_copy):
    original = (bundle_copy / "tokenizer.json").read_text()
    for field, value in (
        ("pad_id", 10**6),
        ("max_length", 0),
        ("lowercase", "yes"),
        ("unassigned", "zz"),
        ("unicode_version", "new"),
        ("vocab", ["<pad>", "<unk>", "a", "a"]),
    ):
        spec = json.loads(original)
        spec[field] = value
        text = json.dumps(spec, ensure_ascii=False, sort_keys=True, indent=1) + "\n"
        (bundle_copy / "tokenizer.json").write_text(text)
        edit_model(
            bundle_copy,
            lambda p, text=text: set_meta(p, "seqship.tokenizer_sha256", hashlib.sha256(text.encode()).hexdigest()),
        )
        rehash(bundle_copy)
        with pytest.raises(TokenizerError):
            Predictor.load(bundle_copy, providers="cpu")
        node = node_load(bundle_copy)
        assert not node["ok"] and node["error"]["name"] == "TokenizerError", (field, node)


def test_top_k_out_of_range_is_an_input_error_in_python_and_node(bundle_copy, tmp_path):
    p = Predictor.load(bundle_copy, providers="cpu")
    for k in (0, len(p.labels) + 1, 1.5, True):
        with pytest.raises(InputError):
            p.predict(["Nguyen"], top_k=k)
    out = subprocess.run(
        [
            "node",
            "--input-type=module",
            "-e",
            f"import {{ load }} from '{JS / 'src' / 'node.js'}';"
            f"const p = await load({json.dumps(str(bundle_copy))}); const r = [];"
            "for (const k of [0, p.labels.length + 1, 1.5]) { try { await p.predict(['Nguyen'], k); r.push('ok'); } catch (e) { r.push(e.name); } }"
            "try { await p.predict('Nguyen'); r.push('ok'); } catch (e) { r.push(e.name); }"
            "console.log(JSON.stringify(r));",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == ["InputError"] * 4, out.stderr


# --- one rule for links and JSON limits, the same verdict from Python, Node and C++ ------------------------


def cpp_load(bundle: Path, pad_id: int) -> dict:
    """The C++ tool on the bundle's model.pt: {"ok", "message"} (its stderr)."""
    from tests.cpp_tool import seqship_predict

    ids = bundle.parent / "ids.txt"
    ids.write_text("5 6 7\n")
    out = subprocess.run(
        [str(seqship_predict()), str(bundle / "model.pt"), str(ids), str(pad_id)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {"ok": out.returncode == 0, "message": out.stderr}


def manifest_note(raw: str):
    """Put `raw` (JSON text, written as is) into the manifest as an extra member."""

    def tamper(bundle: Path, outside: Path) -> None:
        text = (bundle / "manifest.json").read_text()
        (bundle / "manifest.json").write_text(text.replace("{", '{"note": ' + raw + ", ", 1))

    return tamper


def nested(depth: int) -> str:
    """Arrays nested so that, inside the manifest object, `depth` arrays and objects enclose the innermost."""
    return "[" * (depth - 1) + "]" * (depth - 1)


def link_out(name: str):
    def tamper(bundle: Path, outside: Path) -> None:
        (outside / name).write_bytes((bundle / name).read_bytes())
        (bundle / name).unlink()
        (bundle / name).symlink_to(outside / name)

    return tamper


def link_within(name: str):
    def tamper(bundle: Path, outside: Path) -> None:
        (bundle / "sub").mkdir(exist_ok=True)
        (bundle / name).rename(bundle / "sub" / name)
        (bundle / name).symlink_to(Path("sub") / name)

    return tamper


# case -> (how to tamper, whether every consumer loads it, words all their messages share)
LIMITS = {
    "manifest.json a link out of the bundle": (link_out("manifest.json"), False, "outside the bundle folder"),
    "model.pt a link out of the bundle": (link_out("model.pt"), False, "outside the bundle folder"),
    "manifest.json a link within the bundle": (link_within("manifest.json"), True, None),
    "model.pt a link within the bundle": (link_within("model.pt"), True, None),
    "512 levels of nesting": (manifest_note(nested(512)), True, None),
    "513 levels of nesting": (manifest_note(nested(513)), False, "nested deeper than 512"),
    "5000 levels of nesting": (manifest_note(nested(5000)), False, "JSON"),
    "integer 2**53 - 1": (manifest_note(str(2**53 - 1)), True, None),
    "integer -(2**53 - 1)": (manifest_note(str(-(2**53 - 1))), True, None),
    "integer 2**53": (manifest_note(str(2**53)), False, "is outside +-9007199254740991"),
    "integer -(2**53)": (manifest_note(str(-(2**53))), False, "is outside +-9007199254740991"),
    "integer of 400 digits": (manifest_note("9" * 400), False, "is outside +-9007199254740991"),
    "number 1e400": (manifest_note("1e400"), False, "too large for a double"),
    "number -1.5e308": (manifest_note("-1.5e308"), True, None),
    "number 1e-400": (manifest_note("1e-400"), True, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(LIMITS))
def test_python_node_and_cpp_give_the_same_verdict_on_links_and_json_limits(bundle_copy, tmp_path, case):
    tamper, loads, words = LIMITS[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    pad_id = json.loads((bundle_copy / "tokenizer.json").read_text())["pad_id"]
    tamper(bundle_copy, outside)
    try:
        Predictor.load(bundle_copy, providers="cpu")
        python = {"ok": True, "message": ""}
    except BundleError as e:
        python = {"ok": False, "message": str(e)}
    node = node_load(bundle_copy)
    node = {"ok": node["ok"], "message": node.get("error", {}).get("message", "")}
    cpp = cpp_load(bundle_copy, pad_id)
    for consumer, got in (("Python", python), ("Node", node), ("C++", cpp)):
        assert got["ok"] == loads, (consumer, case, got)
        if not loads:
            assert words in got["message"], (consumer, case, got)
