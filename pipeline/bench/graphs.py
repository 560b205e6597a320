"""Compare the onnxruntime speed of model.onnx files that share the model contract, in one process.

usage:

    python -m seqship.pipeline.bench.graphs --onnx A.onnx B.onnx [...] [--rounds N] [--json]

For a change to the exported graph (same weights, other nodes): one text (T=7) and a batch of 128 texts
without padding, each file on a single-threaded session, in 30 interleaved rounds so that other tenants of
a shared machine slow every file alike; prints the fastest and the median round per file. Ratios between
the files are what to compare; absolute numbers move with the machine.
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnxruntime as ort


def measure(paths: list[str], rounds: int = 30) -> dict[str, dict[str, list[float]]]:
    """Microseconds per call of each file, per feed, one entry per round."""
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
    return {p: {name: times[(p, name)] for name in feeds} for p in paths}


def main(argv: list[str] | None = None) -> None:
    """Print the fastest and the median round per file and feed (with --json, as JSON)."""
    from seqship.pipeline.bench.args import add_json, parser

    ap = parser(__doc__)
    ap.add_argument("--onnx", nargs="+", required=True, help="model.onnx files that share the model contract.")
    ap.add_argument("--rounds", type=int, default=30, help="Interleaved rounds.")
    add_json(ap)
    args = ap.parse_args(argv)
    times = measure(args.onnx, args.rounds)
    summary = {
        p: {name: {"min_us": min(t), "median_us": float(np.median(t))} for name, t in feeds.items()}
        for p, feeds in times.items()
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    for p, feeds in summary.items():
        cells = [f"{name}: min {f['min_us']:8.1f} µs, median {f['median_us']:8.1f} µs" for name, f in feeds.items()]
        print(f"{p}\n  " + "\n  ".join(cells))


if __name__ == "__main__":
    main()
