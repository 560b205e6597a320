"""Benchmark of `pipeline predict --engine ray` against local scoring, on the same texts, in one run.

    python -m seqship.pipeline.bench.ray --bundle artifacts/names/bundle --texts 200000 [--data-dir ../shared/data]

Makes a file of N real texts (the names data, repeated to N rows; or --input FILE), then times, each as a
fresh `pipeline predict` process, as a user runs them: local scoring (`--input FILE --output FILE`), and
the ray engine on a local Ray with 1 and 2 workers (`--workers`). Prints wall-clock seconds and texts/s
per configuration, and each one's ratio to local scoring; the ray rows also give the job's own scoring
time from summary.json (without Ray's start-up). Ratios within one run are the figure to compare:
absolute speeds vary with the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_input(path: Path, n: int, data_dir: Path) -> None:
    names = []
    for f in sorted((data_dir / "names").glob("*.txt")):
        names += [t for t in f.read_text(encoding="utf-8").split("\n") if t.strip()]
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            out.write(names[i % len(names)] + "\n")


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--texts", type=int, default=200_000, help="rows to score")
    ap.add_argument("--input", type=Path, default=None, help="score this file of texts instead (one per line)")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("SEQSHIP_DATA_DIR", "../shared/data")))
    ap.add_argument("--workers", default="1,2", help="ray worker counts to time")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "seqship.pipeline.cli", "-q", "predict", "--bundle", args.bundle]
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        src = folder / "texts.txt"
        if args.input:
            src.write_bytes(args.input.read_bytes())
        else:
            make_input(src, args.texts, args.data_dir)
        n = sum(1 for _ in open(src, encoding="utf-8"))
        rows = [("local (`--input FILE`)", timed([*cli, "--input", str(src), "--output", f"{tmp}/local.jsonl"]), None)]
        for w in [int(x) for x in args.workers.split(",")]:
            out = Path(tmp) / f"ray{w}"
            seconds = timed(
                [*cli, "--input", str(folder), "--output", str(out), "--engine", "ray", "--workers", str(w)]
            )
            job = json.loads((out / "summary.json").read_text())["seconds"]["scoring"]
            rows.append((f"ray, {w} worker{'s' if w > 1 else ''}", seconds, job))
    base = rows[0][1]
    print(f"{n:,} texts, bundle {args.bundle}, {os.cpu_count()} cores\n")
    print("| configuration | wall s | texts/s | vs local | ray job s (no start-up) | job texts/s |")
    print("|---|---|---|---|---|---|")
    for name, seconds, job in rows:
        extra = f"{job:.1f} | {n / job:,.0f}" if job else "– | –"
        print(f"| {name} | {seconds:.1f} | {n / seconds:,.0f} | {base / seconds:.2f}x | {extra} |")


if __name__ == "__main__":
    main()
