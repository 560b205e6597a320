"""PyTorch model -> model.pt (TorchScript), kept because C++ libtorch users load it."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

from seqship.exporters.contract import ModelContract
from seqship.exporters.errors import ContractError, ExportError
from seqship.runtime.fsio import commit_partial, partial_path

log = logging.getLogger(__name__)


def export_torchscript(model: torch.nn.Module, path: str | os.PathLike, contract: ModelContract) -> dict:
    """Script `model` (eval, CPU), save it atomically, reload it and check it accepts any batch and seq.

    torch.jit is deprecated (DeprecationWarning on 2.13): the warning is captured and returned for the
    bundle's notes rather than silenced globally.
    """
    path = Path(path)
    tmp = partial_path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            scripted = torch.jit.script(model.eval())
            scripted.save(os.fspath(tmp))
            loaded = torch.jit.load(os.fspath(tmp), map_location="cpu")
        except Exception as e:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"TorchScript export failed for {path.name}: {type(e).__name__}: {e}") from e
    problems = []
    with torch.inference_mode():
        for batch, seq in ((2, 5), (1, 1), (3, 17)):
            out = loaded(torch.ones(batch, seq, dtype=torch.int64), torch.full((batch,), seq, dtype=torch.int64))
            if tuple(out.shape) != (batch, contract.num_labels) or out.dtype != torch.float32:
                problems.append(f"returned {out.dtype}{list(out.shape)} for batch={batch}, seq={seq}")
    if problems:
        tmp.unlink(missing_ok=True)
        raise ContractError(path, problems)
    commit_partial(tmp, path)
    log.info("exported %s (%d bytes)", path.name, path.stat().st_size)
    return {
        "probe_shapes": [[2, 5], [1, 1], [3, 17]],
        "warnings": sorted({str(w.message).splitlines()[0][:200] for w in caught}),
    }
