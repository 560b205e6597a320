"""Faults in the pipeline: killed runs, corrupted intermediates and hand-edited bundles never yield a wrong bundle."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from seqship.pipeline.train import TrainError, load_trained
from seqship.runtime import Predictor
from tests.conftest import TINY, invoke
from tests.faults import held_at


def start(args, held_before: str | None = None):
    """`pipeline ARGS` in a child; held (60 s) before the stage `held_before` commits its outputs."""
    cmd = held_at(held_before) if held_before else [sys.executable, "-m", "seqship.pipeline.cli"]
    return subprocess.Popen([*cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc, condition, what, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
def test_runs_killed_in_train_export_and_package_leave_no_bundle_and_resume(data_dir, tmp_path):
    run = tmp_path / "k"
    args = [
        "run",
        "all",
        "--data-dir",
        str(data_dir),
        "--artifacts-dir",
        str(tmp_path),
        "--run-name",
        "k",
        "--no-baseline",
        *TINY,
        "--epochs",
        "3",
    ]

    # 1. killed while training
    kill_when(start(args), lambda: any(run.glob(".train.*.partial")), "training started")
    assert (run / "stages" / "data.json").exists() and not (run / "stages" / "train.json").exists()
    assert not (run / "train").exists() and not (run / "bundle").exists()

    # 2. killed while exporting (TorchScript written, ONNX export under way)
    kill_when(start(args), lambda: any(run.glob(".export.*.partial/model.pt")), "export started")
    assert (run / "stages" / "train.json").exists() and not (run / "stages" / "export.json").exists()
    assert not (run / "export").exists() and not (run / "bundle").exists()

    # 3. killed while packaging, at the worst moment: every bundle file written, not yet renamed into place
    kill_when(
        start(args, held_before="package"),
        lambda: any(run.glob(".bundle.*.partial/manifest.json")),
        "package paused",
    )
    assert (run / "stages" / "verify.json").exists() and not (run / "bundle").exists()

    # 4. the next run reuses every finished stage and completes the bundle
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["skipped"] for s in summary["stages"]] == [True, True, True, True, False]
    assert Predictor.load(run / "bundle", providers="cpu").predict(["Nguyen"])[0].label
    assert not list(run.glob(".*.partial"))  # leftovers of the killed runs were cleaned up

    # 5. replacing an existing bundle: killed before the new one is in place, the old one stays whole
    kill_when(
        start([*args, "--atol", "2e-5"], held_before="package"),
        lambda: any(run.glob(".bundle.*.partial/manifest.json")),
        "the second package paused",
    )
    old = Predictor.load(run / "bundle", providers="cpu")
    assert old.bundle.manifest["parity"]["atol"] == 1e-5
    assert invoke(*args, "--atol", "2e-5").exit_code == 0
    assert Predictor.load(run / "bundle", providers="cpu").bundle.manifest["parity"]["atol"] == 2e-5


@pytest.mark.slow
def test_a_truncated_checkpoint_is_detected_and_retrained(tiny_run, data_dir, tmp_path):
    shutil.copytree(tiny_run[0] / "tiny", tmp_path / "tiny")
    weights = tmp_path / "tiny" / "train" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(TrainError, match=r"weights.pt: cannot be loaded .* re-run `pipeline run train --force`"):
        load_trained(weights.parent)
    alone = invoke("run", "export", "--artifacts-dir", str(tmp_path), "--run-name", "tiny")
    assert alone.exit_code == 1 and "outputs of stage train" in alone.output
    result = invoke(
        "run",
        "all",
        "--data-dir",
        str(data_dir),
        "--artifacts-dir",
        str(tmp_path),
        "--run-name",
        "tiny",
        "--json",
        "--no-baseline",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    assert [s["skipped"] for s in json.loads(result.stdout)["stages"]] == [True, False, False, False, False]
    load_trained(weights.parent)  # whole again


def test_verify_on_a_hand_edited_bundle_fails_with_the_parity_table(tiny_run, bundle_copy, monkeypatch):
    bundle = Path(tiny_run[1]["bundle"])
    monkeypatch.chdir(bundle.parent)  # a relative --bundle: every engine (each in its own process) finds the model
    untouched = invoke("verify", "--bundle", bundle.name)
    assert untouched.exit_code == 0, untouched.output  # the untouched bundle passes
    engines = {line.split()[0] for line in untouched.output.splitlines() if line.endswith(" ok") and " yes " in line}
    assert engines == {"onnxruntime", "onnx.reference", "openvino", "tract", "onnxruntime-node", "onnxruntime-web"}
    path = bundle_copy / "model.onnx"
    m = onnx.load(path)
    scale = next(i for i in m.graph.initializer if i.dims and i.dims[0] == 18)  # the head: one row per label
    scale.float_data[:] = []
    arr = onnx.numpy_helper.to_array(scale).copy()
    arr[0] += 0.01  # a tiny edit: the first label's logit shifts by 0.01
    scale.CopyFrom(onnx.numpy_helper.from_array(arr, scale.name))
    onnx.save(m, path)
    result = invoke("verify", "--bundle", str(bundle_copy))
    assert result.exit_code == 1
    assert "file model.onnx: sha256 differs from the manifest" in result.output
    # Nothing of a bundle that failed its integrity checks is run (model.pt would be unpickled).
    assert not [line for line in result.output.splitlines() if line.startswith(("onnxruntime", "tract", "openvino"))]
    # Re-hashed into the manifest, the edit passes every file check; the parity table catches it, in
    # onnxruntime and in every other engine, on every probe.
    from seqship.runtime.bundle import file_entry

    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = file_entry(path)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("verify", "--bundle", str(bundle_copy))
    assert result.exit_code == 1 and "sha256 differs" not in result.output
    fails = [line for line in result.output.splitlines() if line.endswith("FAIL")]
    assert len([f for f in fails if f.startswith("onnxruntime:CPUExecutionProvider")]) >= 3
    assert {f.split()[0] for f in fails} >= {
        "onnx.reference",
        "openvino",
        "tract",
        "onnxruntime-node",
        "onnxruntime-web",
    }
