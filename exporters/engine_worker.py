"""Run a model.onnx in one engine, in a process of its own (the gate survives an engine that aborts).

usage: python -m seqship.exporters.engine_worker ENGINE MODEL.onnx INPUT.json OUTPUT.npz
  INPUT: {"batches": [{"ids": [[...]], "lengths": [...]}, ...]}
  OUTPUT: b0, b1, ... (logits per batch) and meta (JSON: version, settings, batches; or skipped / error)
All batches run in one loaded model, so passing them proves the graph's axes are really dynamic there.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from seqship.exporters.engines import LOADERS, EngineUnavailable, version_of


def main(argv: list[str]) -> int:
    """Run one engine on the probes of a job file and write its outputs as .npz (one process per engine)."""
    name, model, inp, out = argv
    batches = json.loads(open(inp, encoding="utf-8").read())["batches"]
    arrays: dict[str, np.ndarray] = {}
    try:
        engine = LOADERS[name](model)
        for i, b in enumerate(batches):
            ids = np.asarray(b["ids"], dtype=np.int64).reshape(len(b["lengths"]), -1)
            arrays[f"b{i}"] = np.asarray(engine.run(ids, np.asarray(b["lengths"], dtype=np.int64)), dtype=np.float32)
        meta = {"version": engine.version, "settings": engine.settings, "batches": len(batches)}
    except EngineUnavailable as e:
        meta, arrays = {"skipped": str(e)}, {}
    except Exception as e:  # the engine's own error types: reported, the gate decides
        meta, arrays = (
            {
                "version": version_of(name),
                "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400] if str(e).strip() else ''}",
            },
            {},
        )
    np.savez(out, meta=np.array(json.dumps(meta)), **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
