"""Compare the onnxruntime speed of model.onnx files that share the model contract, in one process.

usage: python -m seqship.pipeline.bench.graphs A.onnx B.onnx [...]

For a change to the exported graph (same weights, other nodes): one text (T=7) and a batch of 128 texts
without padding, each file on a single-threaded session, in 30 interleaved rounds so that other tenants of
a shared machine slow every file alike; prints the fastest and the median round per file. Ratios between
the files are what to compare; absolute numbers move with the machine.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import onnxruntime as ort


def main(paths: list[str], rounds: int = 30) -> None:
    """Compare two ONNX graphs' onnxruntime speed in one process and print the ratios."""
    if not paths:
        raise SystemExit(__doc__)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sessions = [ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in paths]
    rng = np.random.default_rng(0)
    feeds = {
        "one text": ({"token_ids": rng.integers(2, 50, (1, 7)), "lengths": np.array([7])}, 400),
        "128 texts": ({"token_ids": rng.integers(2, 50, (128, 9)), "lengths": np.full(128, 9)}, 20),
    }
    times = {(p, name): [] for p in paths for name in feeds}
    for _ in range(rounds):
        for p, s in zip(paths, sessions):
            for name, (feed, n) in feeds.items():
                feed = {k: v.astype(np.int64) for k, v in feed.items()}
                t = time.perf_counter()
                for _ in range(n):
                    s.run(["logits"], feed)
                times[(p, name)].append((time.perf_counter() - t) / n * 1e6)
    for p in paths:
        cells = [
            f"{name}: min {min(times[(p, name)]):8.1f} µs, median {np.median(times[(p, name)]):8.1f} µs"
            for name in feeds
        ]
        print(f"{p}\n  " + "\n  ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1:])
