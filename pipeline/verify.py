"""Assemble the parity gate for one run: backends, probes, and the whole-test-set check."""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
import torch

from seqship.exporters.parity import Backend, check_test_set, make_probes, run_gate
from seqship.exporters.portability import engine_gate
from seqship.pipeline.train import load_trained
from seqship.runtime.bundle import (
    MODEL_ONNX,
    MODEL_TORCHSCRIPT,
    TOKENIZER,
    Bundle,
    read_pinned_manifest,
    safe_member,
    sha256_file,
)
from seqship.runtime.errors import BundleError
from seqship.runtime.predictor import Predictor
from seqship.runtime.session import CUDA, OnnxModel

log = logging.getLogger(__name__)
MAX_PROBE_LENGTH = 4096  # the "long" probe: 4x the longest text, within what the slowest engine runs in seconds


def torch_backend(module, device: str = "cpu") -> Backend:
    """Logits from an eager or TorchScript module, under inference_mode."""

    def run(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device)).float().cpu().numpy()

    return run


def build_report(train_dir: Path, export_dir: Path, test_rows: Sequence[tuple[str, str]], cfg) -> dict:
    """Run every check of the gate and return the report (the caller decides what a failure means)."""
    model, tokenizer, labels, metrics = load_trained(train_dir)
    onnx_path, ts_path = export_dir / MODEL_ONNX, export_dir / MODEL_TORCHSCRIPT
    reference = torch_backend(model)
    backends: dict[str, Backend] = {
        "torchscript:cpu": torch_backend(torch.jit.load(str(ts_path), map_location="cpu")),
        "onnxruntime:CPUExecutionProvider": OnnxModel(onnx_path, providers="cpu").run,
    }
    skipped = []
    if torch.cuda.is_available():
        backends["torchscript:cuda"] = torch_backend(torch.jit.load(str(ts_path), map_location="cuda"), "cuda")
    else:
        skipped.append(
            {"backend": "torchscript:cuda", "reason": "torch.cuda.is_available() is False (no CUDA GPU here)"}
        )
    if CUDA in ort.get_available_providers():
        backends[f"onnxruntime:{CUDA}"] = OnnxModel(onnx_path, providers="cuda").run
    else:
        skipped.append(
            {"backend": f"onnxruntime:{CUDA}", "reason": f"onnxruntime offers only {ort.get_available_providers()}"}
        )
    texts = [t for t, _ in test_rows]
    real = tokenizer.encode_batch(texts[:64])[:2] if texts else None
    longest = max(metrics.get("longest_train_tokens", 0), tokenizer.spec.max_length)
    probes = make_probes(
        tokenizer.vocab_size,
        tokenizer.spec.pad_id,
        long_length=min(4 * longest, MAX_PROBE_LENGTH),
        ragged_length=min(tokenizer.spec.max_length, 64),
        real=real,
        seed=cfg.seed,
    )
    report = run_gate(reference, backends, probes, cfg.atol, cfg.rtol)
    report["reference"] = "pytorch eager (cpu, float32, eval, inference_mode)"
    report["skipped"] = skipped
    predictor = Predictor(onnx_path, tokenizer, labels, providers="cpu")
    report["test_set"] = check_test_set(reference, predictor, texts, cfg.atol, cfg.rtol)
    report["engines"] = engine_gate(
        onnx_path, reference, probes, _ids(tokenizer, texts), tokenizer.spec.pad_id, cfg.atol, cfg.rtol
    )
    report["passed"] = report["passed"] and report["test_set"]["passed"] and report["engines"]["passed"]
    report["files"] = {MODEL_ONNX: sha256_file(onnx_path), MODEL_TORCHSCRIPT: sha256_file(ts_path)}
    return report


def _ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of the texts that can be scored (the rest are the runtime's InputError, tested elsewhere)."""
    out = []
    for i, t in enumerate(texts):
        try:
            out.append(tokenizer.encode(t, i)[0])
        except Exception:  # an empty or unscoreable text has no ids to compare
            continue
    return out


def read_hashed(path: Path, size: int) -> bytes:
    """A bundle file's bytes, read once (at most size + 1 of them: a longer file fails its sha256 anyway).
    Everything verify runs, unpickles or hands to another engine comes from these bytes."""
    with open(path, "rb") as f:
        return f.read(size + 1)


def verify_bundle(
    bundle_dir: Path, cfg, texts: Sequence[str] | None = None, expected_sha256: str | None = None
) -> dict:
    """Parity of a shipped bundle: its model.onnx against its own model.pt (TorchScript), which the gate
    proved equal to eager PyTorch when the bundle was made. File integrity is reported, not assumed.

    Each file is read once and hashed; TorchScript, onnxruntime, the tokenizer and the other engines get
    those bytes (the engines, in their own processes, a private copy of them), never the file opened again.
    A pin (expected_sha256) that the manifest does not match is a BundleError before anything else is read."""
    root = Path(bundle_dir)
    manifest, digest = read_pinned_manifest(root, expected_sha256)
    integrity, data = [], {}
    if MODEL_TORCHSCRIPT not in manifest["files"]:  # the reference must be a file the manifest hashes
        integrity.append(
            {
                "file": MODEL_TORCHSCRIPT,
                "passed": False,
                "problem": "not listed in the manifest, so it cannot serve as the verified reference",
            }
        )
    for name, entry in manifest["files"].items():
        path = safe_member(root, name)
        problem = None
        if not path.is_file():
            problem = "missing"
        else:
            content = read_hashed(path, entry["bytes"])
            if hashlib.sha256(content).hexdigest() != entry["sha256"]:
                problem = "sha256 differs from the manifest (altered after packaging)"
            else:
                data[name] = content
        integrity.append({"file": name, "passed": problem is None, **({"problem": problem} if problem else {})})
    predictor = None
    if all(i["passed"] for i in integrity):
        try:  # exactly what an application's Predictor.load checks (metadata, external data, Unicode, finite)
            predictor = Predictor.from_bundle(Bundle(root, manifest, digest, data), providers="cpu")
        except Exception as e:  # a SeqshipError names the problem; anything else is still a failure to load
            integrity.append(
                {
                    "file": "(bundle)",
                    "passed": False,
                    "problem": f"Predictor.load refuses it: {type(e).__name__}: {str(e)[:400]}",
                }
            )
    if predictor is not None:
        from seqship.runtime.tokenizer import UNICODE_VERSION, unassigned_ranges, version_tuple

        spec = predictor.tokenizer.spec
        if (
            version_tuple(spec.unicode_version) == version_tuple(UNICODE_VERSION)
            and spec.unassigned != unassigned_ranges()
        ):
            integrity.append(
                {
                    "file": TOKENIZER,
                    "passed": False,
                    "problem": (
                        f"its 'unassigned' table is not Unicode {UNICODE_VERSION}'s, though it says it was built with that "
                        "version: runtimes with another Unicode version would trust a wrong table"
                    ),
                }
            )
    if not all(i["passed"] for i in integrity):
        # Nothing of an untrusted bundle is run or unpickled (model.pt is a TorchScript archive).
        return {
            "atol": cfg.atol,
            "rtol": cfg.rtol,
            "results": [],
            "skipped": [],
            "integrity": integrity,
            "passed": False,
            "reference": "none: the bundle failed its integrity checks, so nothing in it was run",
        }
    ts_path = root / MODEL_TORCHSCRIPT
    tokenizer = predictor.tokenizer
    try:
        reference = torch_backend(torch.jit.load(io.BytesIO(data[MODEL_TORCHSCRIPT]), map_location="cpu"))
    except Exception as e:  # torch's own error types for a damaged archive
        raise BundleError(
            f"{ts_path}: TorchScript cannot load it ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    onnx_bytes = data[MODEL_ONNX]
    backends: dict[str, Backend] = {"onnxruntime:CPUExecutionProvider": OnnxModel(onnx_bytes, providers="cpu").run}
    skipped = []
    if CUDA in ort.get_available_providers():
        backends[f"onnxruntime:{CUDA}"] = OnnxModel(onnx_bytes, providers="cuda").run
    else:
        skipped.append(
            {"backend": f"onnxruntime:{CUDA}", "reason": f"onnxruntime offers only {ort.get_available_providers()}"}
        )
    real = tokenizer.encode_batch(list(texts)[:64])[:2] if texts else None
    spec = tokenizer.spec
    probes = make_probes(
        tokenizer.vocab_size,
        spec.pad_id,
        min(4 * spec.max_length, MAX_PROBE_LENGTH),
        min(spec.max_length, 64),
        real,
        cfg.seed,
    )
    report = run_gate(reference, backends, probes, cfg.atol, cfg.rtol, reference_name="torchscript:cpu")
    report["reference"] = f"{MODEL_TORCHSCRIPT} of the bundle (TorchScript, cpu)"
    report["skipped"] = skipped
    report["integrity"] = integrity
    if texts:
        report["test_set"] = check_test_set(reference, predictor, list(texts), cfg.atol, cfg.rtol)
    # The other engines run in their own processes, from a file: a copy of the hashed bytes in a folder
    # only this user can write, not the bundle's model.onnx (which may have changed since it was hashed).
    with tempfile.TemporaryDirectory(prefix="seqship-verify-") as tmp:
        copy = Path(tmp) / MODEL_ONNX
        copy.write_bytes(onnx_bytes)
        report["engines"] = engine_gate(
            copy, reference, probes, _ids(tokenizer, texts or []), spec.pad_id, cfg.atol, cfg.rtol
        )
    report["passed"] = (
        report["passed"]
        and all(i["passed"] for i in integrity)
        and report.get("test_set", {}).get("passed", True)
        and report["engines"]["passed"]
    )
    return report
