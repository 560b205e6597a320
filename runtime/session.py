"""An onnxruntime session that speaks the model contract, on the execution provider that was asked for."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import onnxruntime as ort

from seqship.runtime.errors import BundleError, InputError, ModelOutputError, ProviderError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ALIASES = {"cpu": [CPU], "cuda": [CUDA, CPU]}
INPUTS = ("token_ids", "lengths")
OUTPUT = "logits"


def resolve_providers(providers: str | Sequence[str] | None = "auto") -> list[str]:
    """Turn "auto" | "cpu" | "cuda" | [explicit names] into a provider list onnxruntime can honour."""
    available = ort.get_available_providers()
    if providers is None or providers == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if isinstance(providers, str):
        if providers.lower() not in ALIASES:
            raise ProviderError(
                f"providers={providers!r} is not one of 'auto', 'cpu', 'cuda' or a list of provider names "
                f"(available here: {available})"
            )
        wanted = ALIASES[providers.lower()]
    else:
        wanted = list(providers)
        if not wanted or not all(isinstance(p, str) for p in wanted):
            raise ProviderError(f"providers must be a non-empty list of names, got {providers!r}")
    missing = [p for p in wanted if p not in available]
    if missing:
        hint = (
            " (onnxruntime-gpu must replace onnxruntime: pip uninstall -y onnxruntime && pip install onnxruntime-gpu)"
            if CUDA in missing
            else ""
        )
        raise ProviderError(
            f"execution provider(s) {missing} not available in this onnxruntime{hint}; available: {available}"
        )
    return wanted


class OnnxModel:
    """An InferenceSession over a contract-shaped graph that refuses inputs which would crash it."""

    def __init__(
        self,
        path: str | os.PathLike | bytes,
        providers: str | Sequence[str] | None = "auto",
        intra_op_num_threads: int | None = None,
        inter_op_num_threads: int | None = None,
    ):
        wanted = resolve_providers(providers)
        opts = ort.SessionOptions()
        if intra_op_num_threads is not None:
            opts.intra_op_num_threads = int(intra_op_num_threads)
        if inter_op_num_threads is not None:
            opts.inter_op_num_threads = int(inter_op_num_threads)
        opts.log_severity_level = 3  # onnxruntime's own warnings go to stderr unformatted; we report instead
        # Bytes: the session runs exactly what the caller verified (a path would be opened again, later).
        source = bytes(path) if isinstance(path, (bytes, bytearray, memoryview)) else os.fspath(path)
        if isinstance(source, bytes):
            path = "model.onnx (verified bytes)"
        try:
            self.session = ort.InferenceSession(source, sess_options=opts, providers=wanted)
        except Exception as e:  # onnxruntime's own error types (InvalidGraph, Fail, ...): the model is at fault
            raise BundleError(
                f"{path}: onnxruntime cannot load it ({type(e).__name__}: {str(e).splitlines()[0][:300]})"
            ) from None
        actual = self.session.get_providers()
        # onnxruntime only warns when a provider fails to start; that silent fallback is an error here.
        if not actual or actual[0] != wanted[0]:
            raise ProviderError(
                f"{wanted[0]} was requested but onnxruntime started {actual} for {path}; "
                "check the GPU driver and onnxruntime-gpu install, or ask for providers='cpu'"
            )
        self.provider = actual[0]
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(INPUTS) or [o.name for o in self.session.get_outputs()] != [OUTPUT]:
            raise BundleError(
                f"{path}: graph inputs {names} / outputs {[o.name for o in self.session.get_outputs()]} "
                f"do not follow the model contract {list(INPUTS)} -> ['{OUTPUT}']"
            )
        out_type = self.session.get_outputs()[0].type
        if out_type != "tensor(float)":  # an int or string "logits" would score, or crash, differently per consumer
            raise BundleError(
                f"{path}: output {OUTPUT!r} is {out_type}, the model contract says float32 (tensor(float))"
            )
        self._outputs = [OUTPUT]
        # The session's own binding, when this onnxruntime exposes it: InferenceSession.run re-validates the
        # feed's names on every call (~2 us, a twentieth of a one-text call); the names were checked above.
        self._run = getattr(getattr(self.session, "_sess", None), "run", None) or (
            lambda outputs, feed, _options: self.session.run(outputs, feed)
        )
        out_shape = self.session.get_outputs()[0].shape
        self.num_labels = out_shape[-1] if isinstance(out_shape[-1], int) else None

    def run(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Logits float32 [B, C] for right-padded int64 token_ids [B, T] and lengths [B]."""
        token_ids = np.ascontiguousarray(token_ids, dtype=np.int64)
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        check_batch(token_ids, lengths)
        return self.run_trusted(token_ids, lengths)

    def run_trusted(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """run() without the input checks, for callers that built the batch themselves (the Predictor)."""
        out = self._run(self._outputs, {"token_ids": token_ids, "lengths": lengths}, None)[0]
        if (
            out.dtype != np.float32
            or out.ndim != 2
            or out.shape[0] != token_ids.shape[0]
            or (self.num_labels is not None and out.shape[1] != self.num_labels)
        ):
            raise ModelOutputError(
                f"model.onnx returned {out.dtype} logits of shape {list(out.shape)} for a batch of {token_ids.shape[0]} texts; "
                f"expected [{token_ids.shape[0]}, {self.num_labels}]: the model and its labels disagree"
            )
        return out


def check_batch(token_ids: np.ndarray, lengths: np.ndarray) -> None:
    """Refuse what onnxruntime would answer wrongly (length 0) or die on (an empty axis aborts the process)."""
    if token_ids.ndim != 2 or lengths.ndim != 1 or token_ids.shape[0] != lengths.shape[0]:
        raise InputError(
            f"token_ids must be [batch, seq] and lengths [batch]; got {token_ids.shape} and {lengths.shape}"
        )
    if token_ids.shape[0] == 0 or token_ids.shape[1] == 0:
        raise InputError(f"token_ids has an empty axis {token_ids.shape}: every row needs at least one token")
    if token_ids.min() < 0:  # ONNX Gather would count a negative id from the end: a silent wrong answer
        row = int(np.argwhere(token_ids < 0)[0][0])
        raise InputError(f"row {row}: negative token id {int(token_ids.min())}; ids index tokenizer.json's vocab", row)
    bad = np.flatnonzero((lengths < 1) | (lengths > token_ids.shape[1]))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"row {i}: length {int(lengths[i])} is outside 1..{token_ids.shape[1]} (the padded width)", i)
