"""PyTorch model -> model.onnx with the dynamo exporter, then the contract checks that guard its known pitfalls."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import torch

from seqship.exporters.contract import ModelContract
from seqship.exporters.errors import ContractError, ExportError
from seqship.exporters.recurrent import TRANSLATIONS
from seqship.runtime.fsio import commit_partial, partial_path
from seqship.runtime.session import OnnxModel

log = logging.getLogger(__name__)

MIN_ONNXSCRIPT = (0, 7, 1)
_ONNX_DTYPES = {onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT: "float32"}
# Recurrent ops whose decomposition leaves a stale per-operator dispatch cache behind after an export.
_RECURRENT_OPS = ("gru", "lstm", "rnn_tanh", "rnn_relu")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def require_onnxscript() -> str:
    """onnxscript < 0.7.1 emits linear_before_reset=0 for GRU (wrong logits by ~0.1): refuse it."""
    try:
        version = metadata.version("onnxscript")
    except metadata.PackageNotFoundError:
        raise ExportError("onnxscript is not installed: pip install 'seqship[train]'") from None
    if _version_tuple(version) < MIN_ONNXSCRIPT:
        raise ExportError(
            f"onnxscript {version} exports GRU with linear_before_reset=0, which is wrong for PyTorch's GRU; "
            "upgrade: pip install 'onnxscript>=0.7.1'"
        )
    return version


def clear_recurrent_dispatch_cache() -> int:
    """Work around torch 2.13/2.14: a second export of a GRU in one process fails or pins the seq axis.

    The exporter's GRU decomposition leaves entries in a private per-operator dispatch cache; clearing
    it before each export makes every export behave like the first. Returns how many caches were cleared.
    The post-export contract check still asserts symbolic dims, in case this private API changes.
    """
    cleared = 0
    for name in _RECURRENT_OPS:
        packet = getattr(torch.ops.aten, name, None)
        for overload in packet.overloads() if packet is not None else ():
            cache = getattr(getattr(packet, overload), "_dispatch_cache", None)
            if hasattr(cache, "clear"):
                cache.clear()
                cleared += 1
    return cleared


@contextlib.contextmanager
def _quiet_registration_log():
    """The exporter logs one WARNING per missing torchvision op on every export; none concern this model."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    contract: ModelContract,
    example: tuple[torch.Tensor, torch.Tensor],
    metadata_props: dict[str, str] | None = None,
) -> dict:
    """Export `model` (eval mode, CPU) to `path`, check the contract, and return what was checked."""
    require_onnxscript()
    path = Path(path)
    tmp = partial_path(path)
    model = model.eval()
    cleared = clear_recurrent_dispatch_cache()
    with warnings.catch_warnings(record=True) as caught, _quiet_registration_log():
        warnings.simplefilter("always")
        try:
            program = torch.onnx.export(
                model,
                example,
                dynamo=True,
                verbose=False,
                opset_version=contract.opset,
                input_names=[s.name for s in contract.inputs],
                output_names=[s.name for s in contract.outputs],
                dynamic_shapes=contract.dynamic_shapes,
                custom_translation_table=TRANSLATIONS,
            )
        except Exception as e:  # the exporter raises many private types; keep the cause chained
            raise ExportError(f"torch.onnx.export failed for {path.name}: {type(e).__name__}: {str(e)[:500]}") from e
        # One file while the model is small: the bundle checks a single sha256 and ships no side file.
        try:
            program.save(os.fspath(tmp), external_data=False)
        except OSError:  # a full disk, a read-only folder: reported with its path like every OS error
            tmp.unlink(missing_ok=True)
            raise
        except Exception as e:  # protobuf's EncodeError over 2 GiB
            tmp.unlink(missing_ok=True)
            raise ExportError(
                f"writing {path.name} failed: {type(e).__name__}: {str(e)[:300]} (a single-file ONNX model "
                "must be under 2 GiB: fewer --pair-buckets, a smaller --embed-dim or vocabulary)"
            ) from e
    proto = onnx.load(os.fspath(tmp))
    if metadata_props:
        onnx.helper.set_model_props(proto, dict(metadata_props))
        onnx.save(proto, os.fspath(tmp))
    try:
        checks = check_onnx(tmp, contract)
    except ContractError as e:
        tmp.unlink(missing_ok=True)
        raise ContractError(path, e.problems) from None
    commit_partial(tmp, path)
    checks["dispatch_caches_cleared"] = cleared
    checks["exporter_warnings"] = sorted({str(w.message).splitlines()[0][:200] for w in caught})
    log.info("exported %s (%d bytes)", path.name, path.stat().st_size)
    return checks


def _dims(value_info) -> list:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_onnx(path: str | os.PathLike, contract: ModelContract) -> dict:
    """Check names, then dtypes and symbolic dims, then GRU attributes, then a real session run.

    Collects every problem before raising ContractError, so one run shows everything that is wrong.
    """
    problems: list[str] = []
    proto = onnx.load(os.fspath(path))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        problems.append(f"onnx.checker: {str(e).splitlines()[0]}")
    for kind, actual, expected in (
        ("input", list(proto.graph.input), contract.inputs),
        ("output", list(proto.graph.output), contract.outputs),
    ):
        names = [v.name for v in actual]
        if names != [s.name for s in expected]:
            problems.append(f"{kind} names are {names}, expected {[s.name for s in expected]}")
            continue
        for v, spec in zip(actual, expected):
            dtype = _ONNX_DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))
            if dtype != spec.dtype:
                problems.append(f"{kind} {v.name!r} has dtype {dtype}, expected {spec.dtype}")
            dims = _dims(v)
            if dims != list(spec.dims):
                problems.append(
                    f"{kind} {v.name!r} has dims {dims}, expected {list(spec.dims)} "
                    "(a fixed number where a name is expected means an axis was pinned at export)"
                )
    recurrent = [n for n in proto.graph.node if n.op_type in ("GRU", "LSTM", "RNN")]
    for node in recurrent:
        if node.op_type == "GRU":
            lbr = next((a.i for a in node.attribute if a.name == "linear_before_reset"), 0)
            if lbr != 1:
                problems.append(
                    f"GRU node {node.name!r} has linear_before_reset={lbr}; PyTorch's GRU needs 1 "
                    "(exported by onnxscript < 0.7.1? upgrade it)"
                )
    if not problems:
        try:
            session = OnnxModel(path, providers="cpu")
            # A shape unlike the export example: proves both axes really are dynamic in onnxruntime.
            for batch, seq in ((2, 5), (1, 1)):
                ids = np.ones((batch, seq), dtype=np.int64)
                out = session.run(ids, np.full(batch, seq, dtype=np.int64))
                if out.shape != (batch, contract.num_labels) or out.dtype != np.float32:
                    problems.append(
                        f"onnxruntime returned {out.dtype}{list(out.shape)} for batch={batch}, seq={seq}; "
                        f"expected float32[{batch}, {contract.num_labels}]"
                    )
        except Exception as e:  # any failure to load or run is a contract failure, reported with its cause
            problems.append(f"onnxruntime could not load or run it: {type(e).__name__}: {str(e)[:300]}")
    if problems:
        raise ContractError(path, problems)
    return {
        "inputs": {v.name: _dims(v) for v in proto.graph.input},
        "outputs": {v.name: _dims(v) for v in proto.graph.output},
        "recurrent_nodes": [n.op_type for n in recurrent],
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "metadata_props": {p.key: p.value for p in proto.metadata_props},
        "onnxruntime_probe_shapes": [[2, 5], [1, 1]],
    }


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The model's metadata_props as a dict (labels and tokenizer hash live there)."""
    return {p.key: p.value for p in onnx.load(os.fspath(path), load_external_data=False).metadata_props}


def labels_metadata(labels, tokenizer_sha256: str, version: str) -> dict[str, str]:
    """metadata_props every seqship ONNX file carries, so a lone model.onnx still says what it predicts."""
    return {
        "seqship.labels": json.dumps(list(labels), ensure_ascii=False),
        "seqship.tokenizer_sha256": tokenizer_sha256,
        "seqship.version": version,
    }
