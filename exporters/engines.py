"""Other ONNX engines the parity gate runs a model.onnx in, each behind the same Backend interface.

A bundle is only as portable as the engines that were shown to compute its answers. The gate runs the
same probes in each engine that is installed (onnxruntime always; onnx's reference evaluator, OpenVINO
and tract with the `engines` extra) and records, per engine: whether it loads the graph with symbolic
`batch`/`seq` axes, its differences from PyTorch, and its version. An engine that is not installed is
reported as skipped with the install command; an engine that is installed and disagrees fails the gate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

import numpy as np

Backend = Callable[[np.ndarray, np.ndarray], np.ndarray]
INSTALL_HINT = "pip install 'seqship[engines]' (onnx, openvino, tract)"


@dataclass(frozen=True)
class Engine:
    """A loaded ONNX engine: its name, version, how it was configured, and the model as a Backend."""

    name: str
    version: str
    settings: str  # how it was asked to run (precision, device, shapes)
    run: Backend


class EngineUnavailable(Exception):
    """The engine's package is not installed here (reported as skipped, never as a pass)."""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        raise EngineUnavailable(f"{dist} is not installed: {INSTALL_HINT}") from None


def onnxruntime_engine(path: str | os.PathLike) -> Engine:
    """Load model bytes in onnxruntime (CPU) as an engine of the portability gate."""
    from seqship.runtime.session import OnnxModel

    model = OnnxModel(path, providers="cpu")
    return Engine(
        "onnxruntime", _version("onnxruntime"), "CPUExecutionProvider, float32, symbolic batch/seq", model.run
    )


def reference_engine(path: str | os.PathLike) -> Engine:
    """onnx's own reference evaluator: slow, plain numpy, written from the operator specification."""
    version = _version("onnx")
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load(os.fspath(path)))

    def run(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return np.asarray(evaluator.run(["logits"], {"token_ids": ids, "lengths": lengths})[0])

    return Engine("onnx.reference", version, "ReferenceEvaluator, float32, symbolic batch/seq", run)


def openvino_engine(path: str | os.PathLike) -> Engine:
    """OpenVINO's CPU plugin with f32 precision (its default on AVX-512/AMX CPUs is bf16, ~3e-2 off)."""
    version = _version("openvino")
    import openvino as ov

    core = ov.Core()
    model = core.read_model(os.fspath(path))
    dynamic = all(d.is_dynamic for i in model.inputs for d in [i.get_partial_shape()[0]])
    if not dynamic:
        raise RuntimeError("OpenVINO read the batch axis as static; the graph's symbolic axes were lost")
    threads = str(max(1, min(2, os.cpu_count() or 1)))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()

    def run(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        out = request.infer({"token_ids": ids, "lengths": lengths})
        return np.array(out[compiled.output(0)], dtype=np.float32)

    return Engine("openvino", version, "CPU plugin, INFERENCE_PRECISION_HINT=f32, dynamic batch/seq", run)


def tract_engine(path: str | os.PathLike) -> Engine:
    """tract (Sonos), a Rust engine; symbolic batch and seq facts, optimised once."""
    version = _version("tract")
    import tract

    inference = tract.onnx().load(os.fspath(path))
    model = inference.into_model()
    runnable = model.into_runnable()

    def run(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return np.asarray(runnable.run([ids, lengths])[0].to_numpy(), dtype=np.float32)

    return Engine("tract", version, "typed and decluttered, the graph's own symbolic batch/seq facts", run)


DISTRIBUTIONS = {"onnxruntime": "onnxruntime", "onnx.reference": "onnx", "openvino": "openvino", "tract": "tract"}


def version_of(name: str) -> str | None:
    """The installed version of an engine's package, or None."""
    try:
        return metadata.version(DISTRIBUTIONS[name])
    except metadata.PackageNotFoundError:
        return None


LOADERS: dict[str, Callable[[str | os.PathLike], Engine]] = {
    "onnxruntime": onnxruntime_engine,
    "onnx.reference": reference_engine,
    "openvino": openvino_engine,
    "tract": tract_engine,
}


def load_engines(
    path: str | os.PathLike, names: tuple[str, ...] | None = None
) -> tuple[list[Engine], list[dict], list[dict]]:
    """Load `path` in every engine (or those named): (loaded, skipped, failed to load).

    skipped: not installed here; failed: installed but could not load or compile the graph (a gate failure).
    """
    loaded, skipped, failed = [], [], []
    for name in names or tuple(LOADERS):
        try:
            loaded.append(LOADERS[name](path))
        except EngineUnavailable as e:
            skipped.append({"engine": name, "reason": str(e)})
        except Exception as e:  # any engine's own exception type: the graph does not load there
            failed.append(
                {"engine": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
            )
    return loaded, skipped, failed
