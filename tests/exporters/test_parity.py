"""The parity gate: passes on a real trained model, fails loudly (exit 1, a table) on a wrong export."""

import json
import shutil

import numpy as np
import onnx
import pytest

from seqship.exporters.parity import compare
from seqship.runtime.bundle import file_entry
from tests.conftest import invoke


def test_compare_uses_allclose_semantics_and_reports_where():
    ref = np.array([[10.0, 0.0], [1.0, -2.0]], dtype=np.float32)
    within = ref + np.array([[1e-5 + 10 * 1e-5 - 1e-6, 0], [0, 0]], dtype=np.float32)
    assert compare(ref, within, atol=1e-5, rtol=1e-5)["passed"]
    off = ref.copy()
    off[1, 1] += 1e-3
    s = compare(ref, off, atol=1e-5, rtol=1e-5)
    assert not s["passed"] and s["violations"] == 1 and s["where"] == [1, 1]
    assert s["max_abs"] == pytest.approx(1e-3, rel=1e-3)
    assert s["min_atol_to_pass"] == pytest.approx(1e-3 - 2e-5, rel=1e-2)
    assert not compare(ref, ref[:1], 1e-5, 1e-5)["passed"]
    nan = ref.copy()
    nan[0, 1] = np.nan
    assert "non-finite" in compare(ref, nan, 1e-5, 1e-5)["error"]


def test_gate_passes_on_every_probe_and_the_whole_test_set(tiny_run):
    artifacts, summary = tiny_run
    report = json.loads((artifacts / "tiny" / "verify" / "parity.json").read_text())
    assert report["passed"] and report["atol"] == report["rtol"] == 1e-5
    probes = {p["name"]: p for p in report["probes"]}
    assert set(probes) == {"t1", "long", "ragged", "real"}
    assert probes["t1"]["shape"] == [1, 1]
    longest = json.loads((artifacts / "tiny" / "train" / "metrics.json").read_text())["longest_train_tokens"]
    assert probes["long"]["shape"][1] >= 4 * longest
    assert probes["ragged"]["lengths"][0] == 1 and probes["ragged"]["shape"][0] > 8
    checks = {(r["backend"], r["probe"], r["check"]) for r in report["results"]}
    for backend in ("torchscript:cpu", "onnxruntime:CPUExecutionProvider"):
        assert {(backend, p, "vs_reference") for p in probes} <= checks
        assert (backend, "ragged", "padded_vs_single") in checks
    for r in report["results"]:
        assert {"max_abs", "max_rel", "mean_abs", "p99_abs", "where"} <= r.keys()
    ts = report["test_set"]
    assert ts["label_agreement"] == 1.0 and ts["texts"] == summary["parity"]["test_set_texts"] > 1000


@pytest.fixture
def broken_run(tiny_run, tmp_path):
    """A copy of the tiny run whose exporter 'produced' a GRU with linear_before_reset=0 (onnxscript < 0.7.1)."""
    artifacts, _ = tiny_run
    shutil.copytree(artifacts / "tiny", tmp_path / "tiny")
    path = tmp_path / "tiny" / "export" / "model.onnx"
    m = onnx.load(path)
    for n in m.graph.node:
        for a in n.attribute:
            if n.op_type == "GRU" and a.name == "linear_before_reset":
                a.i = 0
    onnx.save(m, path)
    record = tmp_path / "tiny" / "stages" / "export.json"
    rec = json.loads(record.read_text())
    rec["outputs"]["model.onnx"] = file_entry(path)
    record.write_text(json.dumps(rec))
    return tmp_path


def test_gate_fails_with_a_table_and_exit_1_on_a_wrong_export(broken_run):
    result = invoke("run", "verify", "--artifacts-dir", str(broken_run), "--run-name", "tiny")
    assert result.exit_code == 1
    assert "parity gate failed" in result.output
    failing = [line for line in result.output.splitlines() if line.endswith("FAIL")]
    # What is wrong is the ONNX file: onnxruntime, the predictor and every other ONNX engine flag it,
    # TorchScript and eager PyTorch never do.
    assert failing and not [line for line in failing if line.startswith(("torchscript", "pytorch"))]
    assert any(line.startswith("onnxruntime:CPUExecutionProvider") for line in failing)
    assert any(line.startswith("onnx.reference") for line in failing) and any(
        line.startswith("tract") for line in failing
    )
    report = json.loads((broken_run / "tiny" / "failed" / "verify" / "parity.json").read_text())
    assert report["passed"] is False  # the evidence is kept, apart...
    # ...and the run is as it was: the previous verify stage (of the previous export) is untouched,
    # so packaging refuses because that verification is of another export, not because it is gone.
    assert json.loads((broken_run / "tiny" / "verify" / "parity.json").read_text())["passed"] is True
    assert "failed" in result.output and str(broken_run / "tiny" / "failed" / "verify" / "parity.json") in result.output
    packaged = invoke("run", "package", "--artifacts-dir", str(broken_run), "--run-name", "tiny", "--force")
    assert packaged.exit_code == 1 and "stage verify was made from an earlier export stage" in packaged.output


def test_gate_failure_in_json_mode_carries_the_report(broken_run):
    result = invoke("run", "verify", "--artifacts-dir", str(broken_run), "--run-name", "tiny", "--json")
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["ok"] is False and out["error_type"] == "ParityError" and out["parity"]["passed"] is False


def test_an_export_altered_after_its_stage_ran_is_detected(tiny_run, tmp_path):
    artifacts, _ = tiny_run
    shutil.copytree(artifacts / "tiny", tmp_path / "tiny")
    with open(tmp_path / "tiny" / "export" / "model.onnx", "ab") as f:
        f.write(b"\0")
    result = invoke("run", "verify", "--artifacts-dir", str(tmp_path), "--run-name", "tiny", "--force")
    assert result.exit_code == 1 and "outputs of stage export" in result.output and "--force" in result.output
