"""Training on a busy machine: wall time of the train stage with 1 and 2 threads, alone and with a
CPU-bound process beside it, as ratios from one run.

usage:

    python -m seqship.pipeline.bench.threads [--data-dir DIR] [--datasets a,b] [--epochs N] [--timeout S] [--json]
    python -m seqship.pipeline.bench.threads --data-dir ../shared/data --datasets names --epochs 3

Each figure is a fresh `pipeline run train --force` process on the dataset's default config (the data
stage is prepared once first). "busy" starts one process spinning on the CPU for the duration, as a
user's browser or compiler would. A run that exceeds --timeout is stopped and reported as such.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIN = "import time\nwhile True:\n    pass\n"


def _train_seconds(
    artifacts: Path, dataset: str, threads: int, epochs: int, busy: bool, timeout: float, env: dict
) -> float | None:
    """Wall seconds of one `pipeline run train --force`, or None when it ran past `timeout`."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        started = time.perf_counter()
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "seqship.pipeline.cli",
                    "-q",
                    "run",
                    "train",
                    "--artifacts-dir",
                    str(artifacts),
                    "--run-name",
                    dataset,
                    "--threads",
                    str(threads),
                    "--epochs",
                    str(epochs),
                    "--patience",
                    str(epochs),
                    "--force",
                    "--json",
                ],
                check=True,
                capture_output=True,
                timeout=timeout,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return None
        return time.perf_counter() - started
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def main(argv: list[str] | None = None) -> None:
    """Print (and with --json, emit) the seconds and ratios per dataset."""
    from seqship.pipeline.bench.args import add_data_dir, add_json, parser

    ap = parser(__doc__)
    add_data_dir(ap)
    ap.add_argument("--datasets", default="names", help="Comma-separated registry datasets.")
    ap.add_argument("--epochs", type=int, default=3, help="Epochs per training run.")
    ap.add_argument("--timeout", type=float, default=600, help="Seconds before a training run is stopped.")
    add_json(ap)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(tmp)
        for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            env = dict(os.environ)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "seqship.pipeline.cli",
                    "-q",
                    "run",
                    "data",
                    "--dataset",
                    dataset,
                    "--artifacts-dir",
                    str(artifacts),
                    *(["--data-dir", str(args.data_dir)] if args.data_dir else []),
                ],
                check=True,
                env=env,
            )
            row = {"dataset": dataset, "epochs": args.epochs}
            for threads in (1, 2):
                for busy in (False, True):
                    secs = _train_seconds(artifacts, dataset, threads, args.epochs, busy, args.timeout, env)
                    row[f"{threads}t{'_busy' if busy else ''}"] = secs
                    print(
                        f"{dataset}: {threads} thread(s){' + busy process' if busy else ''}: "
                        f"{'>%.0f' % args.timeout if secs is None else '%.1f' % secs} s",
                        file=sys.stderr,
                        flush=True,
                    )
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| dataset | 1 thread | 2 threads | 1 thread, busy | 2 threads, busy | busy slowdown 1t | busy slowdown 2t |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:

        def s(k, r=r):
            return "timeout" if r[k] is None else f"{r[k]:.1f} s"

        def ratio(a, b, r=r):
            return "—" if r[a] is None or r[b] is None else f"{r[a] / r[b]:.1f}x"

        print(
            f"| {r['dataset']} | {s('1t')} | {s('2t')} | {s('1t_busy')} | {s('2t_busy')} | {ratio('1t_busy', '1t')} | {ratio('2t_busy', '2t')} |"
        )


if __name__ == "__main__":
    main()
