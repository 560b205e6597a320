"""`pipeline serve` under load, as ratios from one run.

usage:

    python -m seqship.pipeline.bench.serve --bundle DIR [--duration S] [--rounds N] [--previous REV] [--json]
    python -m seqship.pipeline.bench.serve --bundle artifacts/names/bundle --duration 10 --rounds 3
    python -m seqship.pipeline.bench.serve --bundle DIR --batching [--texts-per-request N]   # batching on and off

Load is `hey` (Debian's HTTP load generator) on loopback, each request one KServe v2 `infer` of
--texts-per-request real texts. The default run compares, in --rounds interleaved rounds (each contender gets
its share of a noisy machine's good and bad moments), on one connection (a lone request at a time) and on
--connections keep-alive connections:
- `pipeline serve` with its defaults, and with `--workers 2`;
- the reference for a lone request: a minimal Starlette endpoint (the toolkit under FastAPI) on the same
  Uvicorn, calling `Predictor.predict` inline on the event loop, no batching, no limits, no metrics; and,
  when fastapi is importable (it is not a dependency of seqship), the same as a plain FastAPI endpoint;
- `pipeline serve --grpc-port 0` driven over gRPC (ModelInfer, from an asyncio grpc client in this process:
  one call at a time, then --connections calls in flight on one HTTP/2 channel);
- with --previous REV, `pipeline serve` as it was at that git revision (`git archive`, run from a temp folder).
Every contender is one process started once and warmed up for 2 s. Ratios are per round, then the median.
Beside requests/s, each run reads the server's CPU time from /proc (a --workers parent's workers included) and
reports its CPU microseconds per request: at one connection, the client and the kernel's loopback share the
latency, and the server's own cost per request is the steadier figure on a busy machine.

--batching prints the older table instead: batching on and off, --max-delay-ms, one or two scoring
threads, and the server's overhead against calling the Predictor in-process.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import signal
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


def _start(
    bundle: str, options: list[str], env: dict | None = None, cwd: str | None = None
) -> tuple[subprocess.Popen, str]:
    return _start_command(
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
        env,
        cwd,
    )


def _start_command(command: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server that prints its URL on its first line of stdout."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    line = proc.stdout.readline()
    m = re.search(r"http://[^\s,]+", line)
    if not m:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.communicate()[1]}")
    grpc = re.search(r"gRPC at (\S+)", line)
    return proc, grpc.group(1) if grpc else m.group(0)


def inline_server(bundle: str, framework: str = "starlette") -> None:
    """The reference for a lone request: a minimal endpoint on Uvicorn (as `pipeline serve` runs it) that calls
    Predictor.predict inline on the event loop and answers the infer call's label and score in JSON; prints its
    URL, then serves until SIGTERM. framework: "starlette" (the toolkit alone), or "fastapi" (a plain FastAPI
    endpoint taking the body as a dict and returning one)."""
    import socket

    import uvicorn

    from seqship.runtime import Predictor

    predictor = Predictor.load(bundle, providers="cpu", intra_op_num_threads=1)

    def answer(request: dict) -> dict:
        preds = predictor.predict(request["inputs"][0]["data"])
        n = len(preds)
        outputs = [
            {"name": "label", "datatype": "BYTES", "shape": [n], "data": [p.label for p in preds]},
            {"name": "score", "datatype": "FP32", "shape": [n], "data": [p.score for p in preds]},
        ]
        return {"model_name": "m", "outputs": outputs}

    if framework == "fastapi":
        from fastapi import FastAPI

        app = FastAPI()

        @app.post("/v2/models/m/infer")
        async def infer(body: dict) -> dict:
            return answer(body)

    else:
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        async def infer(request):
            return Response(json.dumps(answer(json.loads(await request.body()))), media_type="application/json")

        app = Starlette(routes=[Route("/v2/models/m/infer", infer, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(f"serving at http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)).run(sockets=[sock])


def _start_inline(bundle: str, framework: str) -> tuple[subprocess.Popen, str]:
    code = f"from seqship.pipeline.bench.serve import inline_server; inline_server({bundle!r}, {framework!r})"
    return _start_command([sys.executable, "-c", code])


def _previous_tree(rev: str, into: Path) -> Path:
    """`git archive REV` of the checkout this runs in as a `seqship` package under `into` (put it first on
    PYTHONPATH)."""
    package = into / "seqship"
    package.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev, "runtime", "pipeline", "exporters"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(package)], input=archive, check=True)
    return into


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


def _grpc(address: str, texts: list[str], seconds: float, connections: int) -> dict:
    """hey's figures for gRPC: `connections` calls in flight on one channel (HTTP/2), each a ModelInfer of `texts`,
    for `seconds`, from an asyncio client in this process (Python: on a small machine, the client is part of
    the cost)."""
    import asyncio

    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)

    async def run():
        latencies, codes = [], {}
        async with grpc.aio.insecure_channel(address) as channel:
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            start = time.perf_counter()
            end = start + seconds

            async def client():
                while (t := time.perf_counter()) < end:
                    try:
                        await call(request, timeout=30)
                        code = "200"  # as hey's: OK
                    except grpc.aio.AioRpcError as e:
                        code = e.code().name
                    latencies.append(time.perf_counter() - t)
                    codes[code] = codes.get(code, 0) + 1

            await asyncio.gather(*(client() for _ in range(connections)))
            return latencies, codes, time.perf_counter() - start

    latencies, codes, elapsed = asyncio.run(run())
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "codes": codes,
        "errors": 0,
    }


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process `pid` and of its children now running (a --workers parent's workers),
    from /proc; 0 where there is no /proc."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for p in [pid, *map(int, children)]:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    except (OSError, IndexError):
        return 0.0
    return total


def _measured(load, pid: int, *args, seconds: float, **kwargs) -> dict:
    """load(*args, seconds=..., **kwargs)'s figures, plus the server's CPU microseconds per request answered."""
    before = _cpu_seconds(pid)
    r = load(*args, seconds=seconds, **kwargs)
    r["cpu_us"] = (_cpu_seconds(pid) - before) / max(1.0, r["rps"] * seconds) * 1e6
    return r


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


TEXTS = [
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


def main(argv: list[str] | None = None) -> None:
    """Print the table (and with --json, the figures)."""
    from seqship.pipeline.bench.args import add_bundle, add_json, parser

    ap = parser(__doc__)
    add_bundle(ap)
    ap.add_argument("--duration", type=float, default=10.0, help="Seconds of load per contender and round.")
    ap.add_argument("--one-duration", type=float, default=5.0, help="Seconds of one-connection load per round.")
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved rounds.")
    ap.add_argument("--connections", type=int, default=64, help="Concurrent keep-alive connections.")
    ap.add_argument("--texts-per-request", type=int, default=1, help="Texts per request.")
    ap.add_argument("--previous", metavar="REV", help="Also measure `pipeline serve` as of this git revision.")
    ap.add_argument("--batching", action="store_true", help="The batching table instead (on, off, delay, threads).")
    add_json(ap)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the servers it started are stopped on the way out
    if shutil.which("hey") is None:
        raise SystemExit("needs hey: apt-get install -y hey")
    n = args.texts_per_request
    request_texts = (TEXTS * (n // len(TEXTS) + 1))[:n]
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
        if args.batching:
            _batching_table(args, request_texts, body)
        else:
            _compare(args, body, request_texts, Path(tmp))


def _median(values: list[float]) -> float:
    values = sorted(values)
    return (
        values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    )


def _compare(args, body: Path, texts: list[str], tmp: Path) -> None:
    """Contenders started once each, then --rounds rounds of (1 connection, --connections) per contender."""
    bundle = str(Path(args.bundle).resolve())
    contenders = {
        "seqship": lambda: _start(bundle, []),
        "seqship --workers 2": lambda: _start(bundle, ["--workers", "2"]),
        "inline Starlette": lambda: _start_inline(bundle, "starlette"),
        "seqship gRPC": lambda: _start(bundle, ["--grpc-port", "0"]),
    }
    if importlib.util.find_spec("fastapi") is not None:  # the reference; not a dependency of seqship
        contenders["inline FastAPI"] = lambda: _start_inline(bundle, "fastapi")
    if args.previous:
        src = _previous_tree(args.previous, tmp / "previous")
        env = {**os.environ, "PYTHONPATH": str(src)}
        contenders[f"seqship at {args.previous}"] = lambda: _start(bundle, [], env=env, cwd=str(src))
    procs, urls, loads = {}, {}, {}
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    try:
        for name, start in contenders.items():
            procs[name], urls[name] = start()
            load = functools.partial(_grpc, texts=texts) if "gRPC" in name else functools.partial(_hey, body=body)
            loads[name] = load
            load(urls[name], seconds=2, connections=args.connections)  # warm-up
        for r in range(args.rounds):
            for name in contenders:
                pid = procs[name].pid
                one = _measured(loads[name], pid, urls[name], seconds=args.one_duration, connections=1)
                many = _measured(loads[name], pid, urls[name], seconds=args.duration, connections=args.connections)
                runs[name].append({"one": one, "many": many})
                print(
                    f"round {r + 1}: {name}: 1 connection {one['rps']:.0f} requests/s, "
                    f"{args.connections} connections {many['rps']:.0f} requests/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=120)

    def ratio(a: str, b: str, key: str, figure: str = "rps") -> float:
        return _median([x[key][figure] / y[key][figure] for x, y in zip(runs[a], runs[b])])

    ratios = {
        "seqship / inline Starlette, 1 connection": ratio("seqship", "inline Starlette", "one"),
        f"seqship / inline Starlette, {args.connections} connections": ratio("seqship", "inline Starlette", "many"),
        f"2 workers / 1, {args.connections} connections": ratio("seqship --workers 2", "seqship", "many"),
        "2 workers / 1, 1 connection": ratio("seqship --workers 2", "seqship", "one"),
    }
    ratios["gRPC / HTTP, 1 connection"] = ratio("seqship gRPC", "seqship", "one")
    ratios[f"gRPC / HTTP, {args.connections} connections"] = ratio("seqship gRPC", "seqship", "many")
    if "inline FastAPI" in runs:
        ratios["seqship / inline FastAPI, 1 connection"] = ratio("seqship", "inline FastAPI", "one")
        ratios[f"seqship / inline FastAPI, {args.connections} connections"] = ratio("seqship", "inline FastAPI", "many")
        ratios["seqship / inline FastAPI, server CPU per request, 1 connection"] = ratio(
            "seqship", "inline FastAPI", "one", "cpu_us"
        )
    if args.previous:
        prev = f"seqship at {args.previous}"
        ratios[f"seqship / {args.previous}, 1 connection"] = ratio("seqship", prev, "one")
        ratios[f"seqship / {args.previous}, {args.connections} connections"] = ratio("seqship", prev, "many")
    if args.json:
        print(json.dumps({"runs": runs, "ratios": ratios}, indent=1))
        return
    c = args.connections
    print(
        f"{args.rounds} interleaved rounds; per round and contender: 1 connection for {args.one_duration:g} s, then "
        f"{c} connections for {args.duration:g} s; medians\n"
    )
    print(
        f"| contender | 1 connection: requests/s | p50 ms | server CPU µs/request | {c} connections: requests/s | "
        "p50 ms | p99 ms | non-200 / errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        one = [x["one"] for x in rs]
        many = [x["many"] for x in rs]
        bad = sum(n for x in one + many for code, n in x["codes"].items() if code != "200")
        errors = sum(x["errors"] for x in one + many)
        print(
            f"| {name} | {_median([x['rps'] for x in one]):.0f} | {_median([x['p50_ms'] for x in one]):.2f} | "
            f"{_median([x['cpu_us'] for x in one]):.0f} | {_median([x['rps'] for x in many]):.0f} | {_median([x['p50_ms'] for x in many]):.1f} | "
            f"{_median([x['p99_ms'] for x in many]):.1f} | {bad} / {errors} |"
        )
    print()
    for what, value in ratios.items():
        print(f"{what}: {value:.2f}x (median of the rounds' ratios)")


def _batching_table(args, request_texts: list[str], body: Path) -> None:
    texts = TEXTS
    rows = []
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
