"""`pipeline serve` under load: requests/s, texts/s and latency with dynamic batching on and off, and the
server's overhead against calling the Predictor in-process, as one table from one run.

usage:

    python -m seqship.pipeline.bench.serve --bundle DIR [--duration S] [--connections N] [--texts-per-request N] [--json]
    python -m seqship.pipeline.bench.serve --bundle artifacts/names/bundle --duration 20

Load is `hey` (Debian's HTTP load generator) on loopback: --connections concurrent keep-alive connections
for --duration seconds, each request one KServe v2 `infer` of --texts-per-request real texts; then one connection for 5 s
(the latency of a lone request). Each configuration is a fresh `pipeline serve` process, warmed up for 2 s.
The in-process figures call Predictor.predict on the same texts: one call per request (what a server with no HTTP would cost), and one call per batch of
the size the batching server really formed (read from its /metrics).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = [  # (label, serve options); --threads 2 is the default on this 2-core machine, written out for others
    ("batching on: the defaults (--max-batch 64 --max-delay-ms 0 --threads 2)", ["--threads", "2"]),
    ("batching on, waiting for company (--max-delay-ms 2)", ["--threads", "2", "--max-delay-ms", "2"]),
    ("batching off (--max-batch 1)", ["--threads", "2", "--max-batch", "1"]),
    ("batching on, 1 scoring thread (--threads 1)", ["--threads", "1"]),
]


def _start(bundle: str, options: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seqship.pipeline.cli",
            "-q",
            "serve",
            "--bundle",
            f"m={bundle}",
            "--port",
            "0",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    m = re.search(r"http://\S+", line)
    if not m:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.communicate()[1]}")
    return proc, m.group(0)


def _metric(url: str, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    m = re.search(rf'^{name}\{{model="m"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def hey_command(url: str, body: Path, seconds: float, connections: int) -> list[str]:
    """hey's command line: POST the JSON file `body` to `url` on `connections` keep-alive connections for `seconds`."""
    hey = shutil.which("hey") or "hey"
    return [
        hey,
        "-z",
        f"{seconds}s",
        "-c",
        str(connections),
        "-m",
        "POST",
        "-T",
        "application/json",
        "-D",
        str(body),
        url,
    ]


def _hey(url: str, body: Path, seconds: float, connections: int) -> dict:
    """Requests/s, p50 and p99 in ms, and the status codes and errors of one hey run (its summary)."""
    p = subprocess.run(
        hey_command(f"{url}/v2/models/m/infer", body, seconds, connections),
        capture_output=True,
        text=True,
        check=True,
    )
    out = p.stdout
    pct = dict(re.findall(r"(\d+)% in (\S+) secs", out))
    errors = (
        re.findall(r"\[(\d+)\]\s+(.+)", out.split("Error distribution:")[1]) if "Error distribution:" in out else []
    )
    return {
        "rps": float(re.search(r"Requests/sec:\s+(\S+)", out).group(1)),
        "p50_ms": float(pct["50"]) * 1000,
        "p99_ms": float(pct["99"]) * 1000,
        "codes": {c: int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)},
        "errors": sum(int(n) for n, _ in errors),
    }


def _in_process(bundle: str, texts: list[str], per_call: int, seconds: float) -> float:
    """Texts/s of Predictor.predict called with `per_call` texts at a time, single-threaded, for `seconds`."""
    from seqship.runtime import Predictor

    p = Predictor.load(bundle, providers="cpu", intra_op_num_threads=1)
    calls = [texts[i : i + per_call] for i in range(0, len(texts) - per_call + 1, per_call)] or [texts[:per_call]]
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        batch = calls[i % len(calls)]
        p.predict(batch, top_k=1)
        done += len(batch)
        i += 1
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Print the table (and with --json, the figures)."""
    from seqship.pipeline.bench.args import add_bundle, add_json, parser

    ap = parser(__doc__)
    add_bundle(ap)
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds of load per configuration.")
    ap.add_argument("--connections", type=int, default=64, help="Concurrent keep-alive connections.")
    ap.add_argument("--texts-per-request", type=int, default=1, help="Texts per request.")
    add_json(ap)
    args = ap.parse_args(argv)
    if shutil.which("hey") is None:
        raise SystemExit("needs hey: apt-get install -y hey")
    texts = [
        "Nguyen",
        "Schmidt",
        "Rossi",
        "Kowalski",
        "Tanaka",
        "O'Brien",
        "Dvořák",
        "García",
        "Ivanov",
        "Müller",
        "Papadopoulos",
        "Kim",
        "Silva",
        "Haddad",
        "Janssen",
        "MacDonald",
    ]
    n = args.texts_per_request
    request_texts = (texts * (n // len(texts) + 1))[:n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body.json"
        body.write_text(
            json.dumps(
                {
                    "inputs": [
                        {"name": "text", "datatype": "BYTES", "shape": [len(request_texts)], "data": request_texts}
                    ]
                }
            )
        )
        for label, options in CONFIGS:
            proc, url = _start(args.bundle, options)
            try:
                _hey(url, body, 2, args.connections)  # warm-up
                n0, s0 = _metric(url, "seqship_batch_texts_count"), _metric(url, "seqship_batch_texts_sum")
                r = _hey(url, body, args.duration, args.connections)
                n1, s1 = _metric(url, "seqship_batch_texts_count"), _metric(url, "seqship_batch_texts_sum")
                r["mean_batch"] = (s1 - s0) / max(1.0, n1 - n0)
                r["one"] = _hey(url, body, min(args.duration, 5), 1)  # one connection, one request at a time
            finally:
                proc.terminate()
                proc.wait(timeout=120)
            r.update(label=label, texts_per_s=r["rps"] * len(request_texts))
            rows.append(r)
    inproc_request = _in_process(args.bundle, request_texts * 64, len(request_texts), 5)
    mean_batch = max(1, round(rows[0]["mean_batch"]))
    inproc_batch = _in_process(
        args.bundle, (texts * 64)[: max(mean_batch, len(request_texts)) * 16], max(mean_batch, len(request_texts)), 5
    )
    one = rows[0]["one"]
    one_ms = 1000 / one["rps"]
    inproc_ms = 1000 * len(request_texts) / inproc_request
    result = {
        "rows": rows,
        "in_process_texts_per_s": {"per_request": inproc_request, f"per_batch_of_{mean_batch}": inproc_batch},
        "server_overhead_ms": one_ms - inproc_ms,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(
        f"{args.connections} connections x {args.duration:g} s, {len(request_texts)} text(s) per request, hey on loopback\n"
    )
    print(
        "| configuration | requests/s | texts/s | p50 ms | p99 ms | mean batch | non-200 / errors | 1 connection: p50 ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        bad = sum(n for c, n in r["codes"].items() if c != "200")
        print(
            f"| {r['label']} | {r['rps']:.0f} | {r['texts_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['mean_batch']:.1f} | {bad} / {r['errors']} | {r['one']['p50_ms']:.2f} |"
        )
    print(
        f"\nin-process Predictor.predict, 1 thread: {inproc_request:.0f} texts/s one request's texts per call, "
        f"{inproc_batch:.0f} texts/s in batches of {max(mean_batch, len(request_texts))}"
    )
    print(
        f"defaults, one connection, one request at a time: {one['rps']:.0f} requests/s ({one_ms:.2f} ms each) against "
        f"{inproc_ms:.2f} ms in-process: the server adds {one_ms - inproc_ms:.2f} ms per request"
    )
    print(
        f"batching on vs off: {rows[0]['rps'] / rows[2]['rps']:.2f}x the requests/s; server (batching on) vs "
        f"in-process batches: {rows[0]['texts_per_s'] / inproc_batch:.2f}x"
    )


if __name__ == "__main__":
    main()
