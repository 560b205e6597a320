"""Data-parallel training: `torchrun --nproc-per-node 2 ... pipeline run all` on real data (gloo on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_train_a_model_as_good_as_one_process_and_it_passes_the_parity_gate(tiny_run, data_dir, tmp_path):
    """The same config and global batch size as the tiny run, on 2 processes: each rank takes half of every
    batch. Only rank 0 writes; the bundle it packages passed the parity gate (verify); its test accuracy is
    within 1.5 points of the single-process run's."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    artifacts = tmp_path / "artifacts"
    p = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "seqship.pipeline.cli",
            "run",
            "all",
            "--data-dir",
            str(data_dir),
            "--artifacts-dir",
            str(artifacts),
            "--run-name",
            "ddp",
            "--json",
            "--no-baseline",
            *TINY,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)  # one JSON document: rank 1 printed nothing
    assert out["ok"] and out["parity"]["passed"] and Path(out["bundle"], "manifest.json").is_file()
    train = json.loads((artifacts / "ddp" / "stages" / "train.json").read_text())
    assert train["summary"]["world_size"] == 2
    single = tiny_run[1]["metrics"]
    assert abs(out["metrics"]["test_accuracy"] - single["test_accuracy"]) <= 0.015, (out["metrics"], single)
    assert "rank 1 of 2 (gloo)" in p.stderr
    assert sorted(x.name for x in (artifacts / "ddp").iterdir() if not x.name.startswith(".")) == sorted(
        x.name for x in Path(tiny_run[0], "tiny").iterdir() if not x.name.startswith(".")
    )


def test_a_stray_or_bad_world_size_is_a_clear_error_not_a_bug_report(tmp_path):
    for value, message in (
        ("abc", "WORLD_SIZE='abc' is not a number"),
        ("2", "cannot join the torchrun process group"),
    ):
        env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK")}
        p = subprocess.run(
            [sys.executable, "-m", "seqship.pipeline.cli", "run", "train", "--artifacts-dir", str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "WORLD_SIZE": value},
        )
        assert p.returncode == 1 and message in p.stderr and "bug in seqship" not in p.stderr, p.stderr
