"""seqship's predictor: runs a bundle with numpy and onnxruntime only (no torch, onnx or click).

    from seqship.runtime import Predictor
    p = Predictor.load("artifacts/names/bundle")
    p.predict(["Nguyen"])

The names below load on first use, so `seqship.runtime.textio` (the line and JSON rules that training reads
data by) and `__version__` need neither numpy nor onnxruntime.
"""

from __future__ import annotations

if __name__ != "seqship.runtime":  # the checkout's folder imported under its bare name, from the repository root
    raise ImportError(
        f"seqship's code imports as seqship.runtime, not {__name__} (one namespace: `from seqship.runtime import ...`)"
    )

import importlib
from importlib import metadata
from typing import TYPE_CHECKING

try:
    __version__ = metadata.version("seqship")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

_EXPORTS = {
    "Bundle": "bundle",
    "open_bundle": "bundle",
    "BundleError": "errors",
    "InputError": "errors",
    "ModelOutputError": "errors",
    "ProviderError": "errors",
    "SeqshipError": "errors",
    "TokenizerError": "errors",
    "Prediction": "predictor",
    "Predictor": "predictor",
    "Tokenizer": "tokenizer",
    "TokenizerSpec": "tokenizer",
}
__all__ = [
    "Bundle",
    "BundleError",
    "InputError",
    "ModelOutputError",
    "Prediction",
    "Predictor",
    "ProviderError",
    "SeqshipError",
    "Tokenizer",
    "TokenizerError",
    "TokenizerSpec",
    "__version__",
    "open_bundle",
]

if TYPE_CHECKING:
    from seqship.runtime.bundle import Bundle, open_bundle
    from seqship.runtime.errors import (
        BundleError,
        InputError,
        ModelOutputError,
        ProviderError,
        SeqshipError,
        TokenizerError,
    )
    from seqship.runtime.predictor import Prediction, Predictor
    from seqship.runtime.tokenizer import Tokenizer, TokenizerSpec


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'seqship.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"seqship.runtime.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
