"""Assemble the parity gate for one run: backends, probes, and the whole-test-set check."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
import torch

from exporters.parity import Backend, check_test_set, make_probes, run_gate
from pipeline.train import load_trained
from runtime.bundle import sha256_file
from runtime.predictor import Predictor
from runtime.session import CUDA, OnnxModel

log = logging.getLogger(__name__)


def torch_backend(module, device: str = "cpu") -> Backend:
    """Logits from an eager or TorchScript module, under inference_mode."""

    def run(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device)).float().cpu().numpy()

    return run


def build_report(train_dir: Path, export_dir: Path, test_rows: Sequence[tuple[str, str]], cfg) -> dict:
    """Run every check of the gate and return the report (the caller decides what a failure means)."""
    model, tokenizer, labels, metrics = load_trained(train_dir)
    onnx_path, ts_path = export_dir / "model.onnx", export_dir / "model.pt"
    reference = torch_backend(model)
    backends: dict[str, Backend] = {
        "torchscript:cpu": torch_backend(torch.jit.load(str(ts_path), map_location="cpu")),
        "onnxruntime:CPUExecutionProvider": OnnxModel(onnx_path, providers="cpu").run,
    }
    skipped = []
    if torch.cuda.is_available():
        backends["torchscript:cuda"] = torch_backend(torch.jit.load(str(ts_path), map_location="cuda"), "cuda")
    else:
        skipped.append({"backend": "torchscript:cuda", "reason": "torch.cuda.is_available() is False (no CUDA GPU here)"})
    if CUDA in ort.get_available_providers():
        backends[f"onnxruntime:{CUDA}"] = OnnxModel(onnx_path, providers="cuda").run
    else:
        skipped.append({"backend": f"onnxruntime:{CUDA}", "reason": f"onnxruntime offers only {ort.get_available_providers()}"})
    texts = [t for t, _ in test_rows]
    real = tokenizer.encode_batch(texts[:64])[:2] if texts else None
    longest = max(metrics.get("longest_train_tokens", 0), tokenizer.spec.max_length)
    probes = make_probes(
        tokenizer.vocab_size, tokenizer.spec.pad_id, long_length=4 * longest,
        ragged_length=min(tokenizer.spec.max_length, 64), real=real, seed=cfg.seed,
    )
    report = run_gate(reference, backends, probes, cfg.atol, cfg.rtol)
    report["reference"] = "pytorch eager (cpu, float32, eval, inference_mode)"
    report["skipped"] = skipped
    predictor = Predictor(onnx_path, tokenizer, labels, providers="cpu")
    report["test_set"] = check_test_set(reference, predictor, texts, cfg.atol, cfg.rtol)
    report["passed"] = report["passed"] and report["test_set"]["passed"]
    report["files"] = {"model.onnx": sha256_file(onnx_path), "model.pt": sha256_file(ts_path)}
    return report
