"""Benchmark of `pipeline predict --engine ray` against local scoring, on the same texts, in one run.

usage:

    python -m seqship.pipeline.bench.ray --bundle DIR [--rows N | --texts FILE] [--data-dir DIR] [--workers 1,2] [--json]
    python -m seqship.pipeline.bench.ray --bundle artifacts/names/bundle --rows 200000 --data-dir ../shared/data

Makes a file of N real texts (the names data, repeated to --rows N rows; or the --texts FILE), then times, each as a
fresh `pipeline predict` process, as a user runs them: local scoring (`--input FILE --output FILE`), and
the ray engine on a local Ray with 1 and 2 workers (`--workers`). Prints wall-clock seconds and texts/s
per configuration, and each one's ratio to local scoring; the ray rows also give the job's own scoring
time from summary.json (without Ray's start-up). Ratios within one run are the figure to compare:
absolute speeds vary with the machine and what else runs on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seqship.pipeline.predict import read_texts


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


def main(argv: list[str] | None = None) -> None:
    """Print the table (and with --json, the figures)."""
    from seqship.pipeline.bench.args import add_bundle, add_data_dir, add_json, add_texts, parser

    ap = parser(__doc__)
    add_bundle(ap)
    ap.add_argument("--rows", type=int, default=200_000, help="Rows of names to score (without --texts).")
    add_texts(ap, "the names data of --data-dir, repeated to --rows")
    add_data_dir(ap)
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to time, comma-separated.")
    add_json(ap)
    args = ap.parse_args(argv)
    if args.texts is None and args.data_dir is None:
        ap.error("give --texts FILE, or --data-dir (or SEQSHIP_DATA_DIR) for the names data")
    cli = [sys.executable, "-m", "seqship.pipeline.cli", "-q", "predict", "--bundle", str(args.bundle)]
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        src = folder / "texts.txt"
        if args.texts:
            src.write_text("\n".join(read_texts(args.texts)) + "\n", encoding="utf-8")
        else:
            make_input(src, args.rows, args.data_dir)
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
    if args.json:
        keys = ("configuration", "wall_seconds", "job_seconds")
        print(json.dumps({"texts": n, "rows": [dict(zip(keys, row)) for row in rows]}, indent=1))
        return
    print(f"{n:,} texts, bundle {args.bundle}, {os.cpu_count()} cores\n")
    print("| configuration | wall s | texts/s | vs local | ray job s (no start-up) | job texts/s |")
    print("|---|---|---|---|---|---|")
    for name, seconds, job in rows:
        extra = f"{job:.1f} | {n / job:,.0f}" if job else "– | –"
        print(f"| {name} | {seconds:.1f} | {n / seconds:,.0f} | {base / seconds:.2f}x | {extra} |")


if __name__ == "__main__":
    main()
