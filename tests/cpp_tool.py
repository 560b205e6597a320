"""The C++ tool (runtime/cpp), built once per test process against the installed torch's libtorch, and the
helper that compiles a header-only C++ check without libtorch. Nothing skips: a missing compiler fails."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CPP = Path(__file__).resolve().parents[1] / "runtime" / "cpp"


def _need_toolchain(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} not found: install a C++ toolchain and CMake (apt-get install -y build-essential cmake)"
            )


def _run(cmd) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"


@functools.cache
def seqship_predict() -> Path:
    """runtime/cpp's seqship_predict, built in a private folder (once per test process)."""
    import torch

    _need_toolchain("cmake", "c++")
    build = Path(tempfile.mkdtemp(prefix="seqship-cpp-")) / "build"
    _run(["cmake", "-S", str(CPP), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"])
    _run(["cmake", "--build", str(build), "-j2"])
    return build / "seqship_predict"


@functools.cache
def compile_check(source: Path) -> Path:
    """A C++ program that includes runtime/cpp's headers (no libtorch), compiled once per test process."""
    _need_toolchain("c++")
    exe = Path(tempfile.mkdtemp(prefix="seqship-cppcheck-")) / source.stem
    _run(["c++", "-std=c++17", "-O1", "-I", str(CPP), str(source), "-o", str(exe)])
    return exe
