"""Shared fixtures: the real data folder, and one real pipeline run that many tests inspect."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from seqship import pipeline

# Before anything imports torch: MKL then gives the same bits in this process and in the processes the
# tests start (training twice, the C++ libtorch program), instead of choosing kernels by alignment.
pipeline.pin_blas_for_reproducibility()

REPO = Path(__file__).resolve().parent.parent


def find_data_dir() -> Path:
    """SEQSHIP_DATA_DIR, else ../shared/data beside the checkout (where CI puts it)."""
    env = os.environ.get("SEQSHIP_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = find_data_dir()
    if not (path / "names").is_dir():
        pytest.fail(f"real data not found at {path}/names: set SEQSHIP_DATA_DIR to the shared data folder")
    return path


# Small enough to train in seconds on 2 cores, large enough that parity is checked on a real model.
TINY = ["--epochs", "2", "--embed-dim", "16", "--hidden-dim", "32", "--batch-size", "128"]


def invoke(*args, env=None):
    from click.testing import CliRunner

    from seqship.pipeline.cli import cli

    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir):
    """`pipeline run all --json` on the real names data with a tiny model; returns (artifacts_dir, summary)."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    # --no-baseline: the linear baseline on all of names takes ~45 s; tests/pipeline/test_baseline.py runs it on a subset
    result = invoke(
        "run",
        "all",
        "--data-dir",
        str(data_dir),
        "--artifacts-dir",
        str(artifacts),
        "--run-name",
        "tiny",
        "--json",
        "--no-baseline",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    return artifacts, json.loads(result.stdout)


@pytest.fixture
def bundle_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run's bundle that a test may damage."""
    artifacts, summary = tiny_run
    dst = tmp_path / "bundle"
    shutil.copytree(summary["bundle"], dst)
    return dst


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """seqship's wheel, built from a copy of this tree's three folders (the checkout gets no build/ or egg-info)."""
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for pkg in ("pipeline", "exporters", "runtime"):
        shutil.copytree(
            REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("node_modules", "build", "__pycache__", "*.egg-info")
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    cmd = [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(work / "dist")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (built,) = (work / "dist").glob("seqship-*.whl")
    return built


def two_label_csv(data_dir: Path, path: Path, langs=("Greek", "Polish"), per_label: int = 150) -> Path:
    """A small real table (text,label) of two languages' surnames: a run of seconds."""
    rows = [
        f"{name},{lang}"
        for lang in langs
        for name in (data_dir / "names" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:per_label]
    ]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path
