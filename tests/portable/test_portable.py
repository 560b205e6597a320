"""The same bundle in Node.js, a real browser (WebAssembly) and C++ libtorch agrees with the Python
predictor and with eager PyTorch on 1,000 real test texts and on the parity gate's probes.

Nothing here skips: a missing Node package, Chromium or compiler fails the test with the command that
installs it (`.ci/run` installs them all).
"""

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from seqship.exporters.parity import make_probes
from seqship.pipeline.train import load_trained
from seqship.pipeline.verify import torch_backend
from seqship.runtime import Predictor
from tests.cpp_tool import seqship_predict

REPO = Path(__file__).resolve().parents[2]
JS = REPO / "runtime" / "js"
N_TEXTS = 1000
TYPED = 20
# Tolerances per runtime, |a - b| <= atol + rtol * |eager|. onnxruntime-node/-web and libtorch are
# held to the gate's 1e-5. WebAssembly runs the same graph with its own SIMD kernels; measured max
# |diff| on this model was below 1e-5 as well, so it gets no looser bound (see docs/portable.md).
TOL = {"python": 1e-5, "node": 1e-5, "browser": 1e-5, "cpp": 1e-5}


def need(path: Path, how: str) -> None:
    if not path.exists():
        pytest.fail(f"{path} is missing: run `{how}` (the portable-runtime tests never skip)")


@pytest.fixture(scope="module")
def job(tiny_run, tmp_path_factory):
    """Texts, probes and the eager-PyTorch reference for them."""
    artifacts, summary = tiny_run
    run = artifacts / "tiny"
    texts = [json.loads(line)["text"] for line in (run / "data" / "test.jsonl").read_text().splitlines()][:N_TEXTS]
    model, tok, labels, metrics = load_trained(run / "train")
    longest = max(metrics["longest_train_tokens"], tok.spec.max_length)
    probes = make_probes(tok.vocab_size, tok.spec.pad_id, 4 * longest, min(tok.spec.max_length, 64), None, seed=0)
    probe_rows = [[row[:n].tolist() for row, n in zip(p.token_ids, p.lengths)] for p in probes]
    eager = torch_backend(model)
    ids = [tok.encode(t, i)[0] for i, t in enumerate(texts)]
    ref = np.concatenate([eager(*_pad(ids[i : i + 128], tok.spec.pad_id)) for i in range(0, len(ids), 128)])
    probe_ref = [eager(p.token_ids, p.lengths) for p in probes]
    work = tmp_path_factory.mktemp("portable")
    (work / "job.json").write_text(json.dumps({"texts": texts, "probes": probe_rows, "typed": texts[:TYPED]}))
    return {
        "texts": texts,
        "ids": ids,
        "ref": ref,
        "probes": probes,
        "probe_rows": probe_rows,
        "probe_ref": probe_ref,
        "labels": labels,
        "bundle": summary["bundle"],
        "work": work,
        "pad": tok.spec.pad_id,
    }


def _pad(rows, pad_id):
    from seqship.runtime.tokenizer import pad_batch

    return pad_batch(rows, pad_id)


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


@pytest.fixture(scope="module")
def node_out(job):
    need(JS / "node_modules" / "onnxruntime-node", "npm ci --prefix runtime/js --ignore-scripts")
    out = job["work"] / "node.json"
    run(["node", str(JS / "tools" / "score.mjs"), job["bundle"], str(job["work"] / "job.json"), str(out)])
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def browser_out(job):
    from seqship.runtime.demo import make_server

    need(JS / "node_modules" / "playwright-core", "npm ci --prefix runtime/js --ignore-scripts")
    need(Path(os.environ.get("CHROMIUM", "/usr/bin/chromium")), "apt-get install -y chromium")
    server = make_server(Path(job["bundle"]), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out, shot = job["work"] / "browser.json", job["work"] / "demo.png"
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        run(["node", str(JS / "tools" / "browser_check.mjs"), url, str(job["work"] / "job.json"), str(out), str(shot)])
        result = json.loads(out.read_text())
        result["screenshot"] = shot
        return result
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def cpp_out(job):
    exe = seqship_predict()
    model = Path(job["bundle"]) / "model.pt"

    def score(rows, name):
        path = job["work"] / f"{name}.txt"
        path.write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
        lines = run([str(exe), str(model), str(path), str(job["pad"])]).stdout.splitlines()
        return np.array([[float(v) for v in line.split()] for line in lines], dtype=np.float32)

    return {
        "logits": score(job["ids"], "texts"),
        "probe_logits": [score(r, f"probe{i}") for i, r in enumerate(job["probe_rows"])],
        "exe": exe,
        "model": model,
    }


def check(name, logits, probe_logits, job, report):
    ref = job["ref"]
    got = np.asarray(logits, dtype=np.float32)
    assert got.shape == ref.shape
    labels_agree = float((got.argmax(1) == ref.argmax(1)).mean())
    diff = float(np.abs(got - ref).max())
    probe_diff = max(
        float(np.abs(np.asarray(p, dtype=np.float32) - r).max()) for p, r in zip(probe_logits, job["probe_ref"])
    )
    report[name] = {
        "texts": len(ref),
        "label_agreement": labels_agree,
        "max_abs_diff_texts": diff,
        "max_abs_diff_probes": probe_diff,
    }
    print(f"{name}: labels {labels_agree:.2%}, max |diff| texts {diff:.2e}, probes {probe_diff:.2e}")
    assert labels_agree == 1.0
    np.testing.assert_allclose(got, ref, atol=TOL[name], rtol=TOL[name])
    for p, r in zip(probe_logits, job["probe_ref"]):
        np.testing.assert_allclose(np.asarray(p, dtype=np.float32), r, atol=TOL[name], rtol=TOL[name])


@pytest.mark.slow
def test_python_node_browser_and_cpp_agree_with_eager_pytorch(job, node_out, browser_out, cpp_out):
    report = {}
    predictor = Predictor.load(job["bundle"], providers="cpu")
    from seqship.runtime.session import OnnxModel

    onnx = OnnxModel(Path(job["bundle"]) / "model.onnx", providers="cpu")
    check(
        "python", predictor.logits(job["texts"]), [onnx.run(p.token_ids, p.lengths) for p in job["probes"]], job, report
    )
    check("node", node_out["logits"], node_out["probe_logits"], job, report)
    check("browser", browser_out["logits"], browser_out["probe_logits"], job, report)
    check("cpp", cpp_out["logits"], cpp_out["probe_logits"], job, report)
    report["one_text_latency_us"] = {
        "node_p50": node_out["latency_us_p50"],
        "browser_mean": browser_out["latency_us_mean"],
    }
    (job["work"] / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


def test_javascript_tokenizer_reproduces_the_python_ids(job, node_out, browser_out):
    # The tokenizer spec is enough for another language: Node and the browser give identical ids.
    assert node_out["token_ids"] == job["ids"]
    assert browser_out["token_ids"] == job["ids"]


def test_the_demo_page_shows_the_python_predictors_top_3_as_you_type(job, browser_out):
    predictor = Predictor.load(job["bundle"], providers="cpu")
    expected = predictor.predict(job["texts"][:TYPED], top_k=3)
    shown = browser_out["typed"]
    assert len(shown) == TYPED
    for rows, exp in zip(shown, expected):
        assert [r["label"] for r in rows] == [lab for lab, _ in exp.top_k]
        assert rows[0]["score"] == f"{exp.score * 100:.1f}%"
    shot = browser_out["screenshot"]
    assert shot.stat().st_size > 5000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [m for m in browser_out["console"] if "error" in m.lower() or m.startswith(("HTTP ", "request failed"))]


def test_node_predictor_refuses_a_tampered_bundle(job, tmp_path):
    need(JS / "node_modules" / "onnxruntime-node", "npm ci --prefix runtime/js --ignore-scripts")
    bundle = tmp_path / "bundle"
    shutil.copytree(job["bundle"], bundle)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (bundle / "model.onnx").write_bytes(bytes(data))
    out = subprocess.run(
        ["node", str(JS / "tools" / "score.mjs"), str(bundle), str(job["work"] / "job.json"), str(tmp_path / "o.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "model.onnx: sha256 does not match the manifest" in out.stderr


def test_demo_server_follows_symlinked_folders_but_never_leaves_them(job, tmp_path):
    # A symlinked bundle (or node_modules) is served; a path that climbs out of a folder is not.
    import urllib.error
    import urllib.request

    from seqship.runtime.demo import make_server

    link = tmp_path / "linked-bundle"
    link.symlink_to(Path(job["bundle"]).resolve(), target_is_directory=True)
    server = make_server(link, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert json.loads(urllib.request.urlopen(base + "/bundle/manifest.json").read())["format"] == "seqship.bundle"
        assert urllib.request.urlopen(base + "/ort/ort.min.js").status == 200
        for path in (
            "/bundle/../../../../etc/passwd",
            "/bundle/%2e%2e/%2e%2e/etc/passwd",
            "/js/../../../pyproject.toml",
        ):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + path)
            assert e.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_the_cpp_tool_refuses_a_line_it_cannot_read_whole(job, cpp_out):
    """A malformed line was once scored as its readable prefix ('31 12 x 5' as '31 12'), exit 0: each of
    these is an error naming the line and field, exit 1, with nothing on stdout."""
    vocab = len(json.loads((Path(job["bundle"]) / "tokenizer.json").read_text())["vocab"])
    good = " ".join(map(str, job["ids"][0]))
    pad = job["pad"]
    bad_lines = {
        "31 12 x 5": "field 3: 'x' is not a token id",
        "3 99999999999999999999": "field 2: '99999999999999999999' is not a token id",
        f"3 {vocab}": f"field 2: token id {vocab} is outside the model's {vocab} embedding rows",
        "3 -1": "field 2: token id -1 is outside",
        f"3 4 {pad} {pad}": f"field 3: token id {pad} is the pad id",
        "": "no token ids",
    }
    for line, message in bad_lines.items():
        path = job["work"] / "bad.txt"
        path.write_text(f"{good}\n{line}\n")
        out = subprocess.run(
            [str(cpp_out["exe"]), str(cpp_out["model"]), str(path), str(pad)], capture_output=True, text=True
        )
        assert (out.returncode, out.stdout) == (1, ""), (line, out)
        assert "bad.txt, line 2" in out.stderr and message in out.stderr, (line, out.stderr)
    for bad_pad in ("abc", "-1", str(vocab), f" {pad}", f"+{pad}"):
        out = subprocess.run(
            [str(cpp_out["exe"]), str(cpp_out["model"]), str(path), bad_pad], capture_output=True, text=True
        )
        assert out.returncode == 2 and "PAD_ID" in out.stderr and "terminate" not in out.stderr, (bad_pad, out.stderr)
    for body in (
        good + "\r\n",
        good + "\r" + good + "\r",
        good + "\n" + good,
    ):  # CRLF, CR alone: a line end, never a join
        path.write_bytes(body.encode())
        out = subprocess.run(
            [str(cpp_out["exe"]), str(cpp_out["model"]), str(path), str(pad)], capture_output=True, text=True
        )
        assert out.returncode == 0 and len(out.stdout.splitlines()) == body.count(good), out
        assert all(len(line.split()) == len(job["labels"]) for line in out.stdout.splitlines())
    # the bundle folder itself is taken for its model.pt; any other folder is an error, never an abort
    for model, code in ((cpp_out["model"].parent, 0), (job["work"], 1)):
        out = subprocess.run([str(cpp_out["exe"]), str(model), str(path), str(pad)], capture_output=True, text=True)
        assert out.returncode == code and "terminate" not in out.stderr, out.stderr


@pytest.mark.slow
def test_the_cpp_tool_checks_the_bundle_before_libtorch_reads_model_pt(job, cpp_out):
    """As the Python and Node predictors do: model.pt's size and sha256 against the manifest beside it, and
    the manifest's digest against SEQSHIP_EXPECT_SHA256 when set; nothing is scored otherwise."""
    import hashlib

    bundle = job["work"] / "cpp-bundle"
    shutil.copytree(job["bundle"], bundle)
    ids = job["work"] / "ids.txt"
    ids.write_text(" ".join(map(str, job["ids"][0])) + "\n")
    digest = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()

    def score(env=None):
        return subprocess.run(
            [str(cpp_out["exe"]), str(bundle / "model.pt"), str(ids), str(job["pad"])],
            capture_output=True,
            text=True,
            env=dict(os.environ, **(env or {})),
        )

    for pin in (digest, digest.upper()):
        ok = score({"SEQSHIP_EXPECT_SHA256": pin})
        assert ok.returncode == 0 and len(ok.stdout.split()) == len(job["labels"]), ok.stderr
    for env, message in (
        ({"SEQSHIP_EXPECT_SHA256": "0" * 64}, "not the trusted"),
        ({"SEQSHIP_EXPECT_SHA256": "abc"}, "64 hex"),
    ):
        out = score(env)
        assert (out.returncode, out.stdout) == (1, "") and message in out.stderr, out.stderr
    model = bytearray((bundle / "model.pt").read_bytes())
    model[len(model) // 2] ^= 1
    (bundle / "model.pt").write_bytes(bytes(model))
    out = score()
    assert (
        (out.returncode, out.stdout) == (1, "")
        and "model.pt: sha256" in out.stderr
        and "does not match the manifest" in out.stderr
    )
    for manifest, message in (
        ('{"format": "x", "format": "seqship.bundle", "format_version": 02}', "a missing ',' or '}'"),
        ('{"format": "seqship.bundle", "format": "x"}', "not a seqship bundle manifest"),  # the last wins
        ('{"format": "seqship.bundle", "format_version": 2, "files": {}}', "does not list model.pt"),
        ("[" * 600, "nested deeper than 512"),
    ):
        (bundle / "manifest.json").write_text(manifest)
        out = score()
        assert (out.returncode, out.stdout) == (1, "") and message in out.stderr, out.stderr
    (bundle / "manifest.json").write_bytes(
        b'{"note": "\xff\xfe", "format": "seqship.bundle"}'
    )  # Python and Node refuse it
    out = score()
    assert (out.returncode, out.stdout) == (1, "") and "not valid JSON (not UTF-8)" in out.stderr, out.stderr
    (bundle / "manifest.json").unlink()
    out = score()
    assert out.returncode == 1 and "manifest.json: missing" in out.stderr
    # a link leading out of the bundle folder is refused, as Python and Node refuse one
    shutil.copy(Path(job["bundle"]) / "manifest.json", bundle / "manifest.json")
    (bundle / "model.pt").unlink()
    (bundle / "model.pt").symlink_to(Path(job["bundle"]) / "model.pt")
    out = score()
    assert (out.returncode, out.stdout) == (1, "") and "leads outside the bundle folder" in out.stderr, out.stderr
    # a link that stays inside the folder is fine, as in Python and Node
    (bundle / "model.pt").unlink()
    (bundle / "sub").mkdir()
    shutil.copy(Path(job["bundle"]) / "model.pt", bundle / "sub" / "model.pt")
    (bundle / "model.pt").symlink_to(Path("sub") / "model.pt")
    assert score().returncode == 0
    # a manifest or model.pt of the wrong size is refused before it is read whole (a 1 GiB sparse file)
    for name in ("manifest.json", "model.pt"):
        saved = (bundle / name).resolve().read_bytes()
        os.truncate(bundle / name, 1 << 30)
        out = score()
        assert (out.returncode, out.stdout) == (1, "") and (
            "larger than 16 MiB" in out.stderr or "1073741824 bytes" in out.stderr
        )
        (bundle / name).resolve().write_bytes(saved)
    # the ids may come from a pipe
    piped = subprocess.run(
        [str(cpp_out["exe"]), str(job["bundle"]), "/dev/stdin", str(job["pad"])],
        input=ids.read_text(),
        capture_output=True,
        text=True,
    )
    assert piped.returncode == 0 and len(piped.stdout.split()) == len(job["labels"]), piped.stderr


@pytest.mark.slow
def test_the_cpp_tool_given_model_onnx_says_it_takes_model_pt(job, cpp_out, tmp_path):
    """It once said model.onnx was "truncated or replaced": any file but a bundle's model.pt is a usage
    error that names model.pt, before a byte of it is read."""
    bundle = Path(job["bundle"])
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(map(str, job["ids"][0])) + "\n")
    (tmp_path / "renamed.pt").write_bytes((bundle / "model.pt").read_bytes())
    for given, words in (
        (bundle / "model.onnx", "is an ONNX model"),
        (tmp_path / "renamed.pt", "is not a bundle's model.pt"),
        (bundle / "tokenizer.json", "is not a bundle's model.pt"),
        (bundle / "manifest.json", "is not a bundle's model.pt"),
    ):
        out = subprocess.run(
            [str(cpp_out["exe"]), str(given), str(ids), str(job["pad"])], capture_output=True, text=True
        )
        assert (out.returncode, out.stdout) == (2, ""), (given, out.stderr)
        assert words in out.stderr and str(given.parent / "model.pt") in out.stderr, out.stderr
        assert "truncated or replaced" not in out.stderr and "terminate" not in out.stderr
    # the bundle's model.pt, spelled in other ways, still runs
    for spelling in (bundle / "model.pt", bundle / ".." / bundle.name / "model.pt", bundle, Path(str(bundle) + "/")):
        out = subprocess.run(
            [str(cpp_out["exe"]), str(spelling), str(ids), str(job["pad"])], capture_output=True, text=True
        )
        assert out.returncode == 0, (spelling, out.stderr)
