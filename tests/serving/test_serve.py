"""`pipeline serve`: the Open Inference Protocol (KServe v2) over real HTTP, a real outside client (tritonclient),
a real load tool (hey), real signals. Nothing here skips: a missing `serve` extra or `hey` fails with the fix."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from seqship.runtime import Predictor
from tests.conftest import REPO
from tests.serving.load import KeepAliveClients

PIPELINE = [sys.executable, "-m", "seqship.pipeline.cli"]


class Server:
    """`pipeline serve` in its own process, on a free port; `url` once it says it is serving."""

    def __init__(self, *args, timeout=90):
        self.proc = subprocess.Popen(
            [*PIPELINE, "serve", "--port", "0", *map(str, args)],
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        line = ""
        while "serving" not in line:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready or self.proc.poll() is not None:
                self.proc.kill()
                pytest.fail(f"the server did not start: {self.proc.communicate()}")
            line = self.proc.stdout.readline()
        self.url = re.search(r"http://\S+", line).group(0)
        self.grpc = m.group(1) if (m := re.search(r"gRPC at (\S+)", line)) else None  # with --grpc-port
        self.host, self.port = self.url[len("http://") :].rsplit(":", 1)
        self.err: list[str] = []  # read as it comes: a full pipe would stall the server, not fail the test
        self.reader = threading.Thread(target=lambda: self.err.extend(iter(self.proc.stderr.readline, "")), daemon=True)
        self.reader.start()

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, int(self.port), timeout=60)

    def send(self, sig) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM) -> tuple[int, str]:
        """Send `sig`, wait for the exit: (exit code, stderr)."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=90)
        self.reader.join(timeout=30)
        return code, "".join(self.err)


def request(server: Server, method: str, path: str, body=None, headers=None):
    """(status, headers, body bytes) of one request on a fresh connection."""
    c = server.conn()
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def infer_body(texts, **params) -> bytes:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    if params:
        body["parameters"] = params
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def bundle(tiny_run) -> str:
    return tiny_run[1]["bundle"]


@pytest.fixture(scope="module")
def local(bundle) -> Predictor:
    return Predictor.load(bundle, providers="cpu")


@pytest.fixture(scope="module")
def surnames(data_dir) -> list[str]:
    """300 real surnames, from the names data's own files."""
    names = []
    for f in sorted((data_dir / "names").glob("*.txt")):
        names += [n.strip() for n in f.read_text(encoding="utf-8").splitlines() if n.strip()][:17]
    return names[:300]


@pytest.fixture(scope="module")
def server(bundle):
    s = Server(
        "--bundle",
        f"names={bundle}",
        "--max-batch",
        "32",
        "--max-delay-ms",
        "2",
        "--max-texts",
        "64",
        "--max-body-bytes",
        "65536",
    )
    yield s
    code, err = s.stop()
    assert code == 0, err
    assert re.search(r"stopped: (\d+) requests accepted, \1 answered", err), err


def test_the_written_json_answer_is_byte_for_byte_the_general_one(local, surnames):
    """The common answer (every text scored, JSON outputs) is written from pieces, for speed: it must be exactly the
    bytes json.dumps makes of the general path's dict, whatever the texts, k, outputs and id (escapes included)."""
    from seqship.runtime.serve.protocol import Limits, Served, _written_response, parse_infer, tensors_response

    served = Served("names", Path("."), local, version=3)
    rng = random.Random(7)
    ids = [None, "", "42", 'q"uote\\back\nline\u0001', "é日本", "\ud800"]
    outputs = ["label", "score", "top_k_labels", "top_k_scores", "num_tokens", "truncated", "error"]
    written = 0
    for _ in range(60):
        texts = rng.sample(surnames, rng.randint(1, 5)) + (["x" * 400] if rng.random() < 0.2 else [])
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
        body["parameters"] = {"top_k": rng.randint(1, len(local.labels))}
        if rng.random() < 0.5:
            body["outputs"] = [{"name": n} for n in rng.sample(outputs, rng.randint(1, len(outputs)))]
        if (rid := rng.choice(ids)) is not None:
            body["id"] = rid
        req = parse_infer(json.dumps(body).encode(), None, len(local.labels), Limits())
        results = local.predict(req.texts, top_k=req.top_k, errors="return")
        fast = _written_response(served, req, results)
        assert fast == tensors_response(served, req, results)[0] or (fast is None and rid == "\ud800"), body
        written += fast is not None
    assert written > 40  # the lone surrogate's (ensure_ascii then) are left to the general path


# ---------------------------------------------------------------------------------------- an outside client


def test_tritonclient_reads_health_and_metadata_and_infers_as_the_local_predictor_does(server, local, surnames):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"{server.host}:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("names")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("names")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "label": "BYTES",
        "score": "FP32",
        "top_k_labels": "BYTES",
        "top_k_scores": "FP32",
        "num_tokens": "INT64",
        "truncated": "BOOL",
        "error": "BYTES",
    }
    assert meta["parameters"]["bundle_sha256"] == local.digest and meta["parameters"]["labels"] == list(local.labels)
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "classification"]

    texts = surnames[:40]
    want = local.predict(texts, top_k=3)
    # tritonclient's defaults: binary tensors in and out
    inp = triton.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    got = client.infer("names", [inp], parameters={"top_k": 3})
    assert [b.decode() for b in got.as_numpy("label")] == [p.label for p in want]
    np.testing.assert_array_equal(got.as_numpy("score"), np.array([p.score for p in want], dtype=np.float32))
    assert [[b.decode() for b in row] for row in got.as_numpy("top_k_labels")] == [
        [lab for lab, _ in p.top_k] for p in want
    ]
    np.testing.assert_array_equal(got.as_numpy("num_tokens"), [p.num_tokens for p in want])
    assert got.as_numpy("truncated").dtype == bool
    # JSON tensors, and the classification extension ("probability:class index:label")
    inp = triton.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
    outs = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("score", class_count=2),
    ]
    got = client.infer("names", [inp], outputs=outs, request_id="r-1")
    assert got.get_response()["id"] == "r-1"
    assert list(got.as_numpy("label")) == [p.label for p in want]
    index = {lab: i for i, lab in enumerate(local.labels)}
    assert [[c.decode() for c in row] for row in got.as_numpy("score")] == [
        [f"{s:f}:{index[lab]}:{lab}" for lab, s in p.top_k[:2]] for p in want
    ]
    with pytest.raises(triton.InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [inp])


def test_a_texts_answer_is_pipeline_predicts_whatever_it_is_batched_with(server, local, surnames, bundle):
    """Concurrent callers' texts share batches; each answer equals `pipeline predict`'s for that text."""
    answers: dict[int, dict] = {}

    def call(i):
        status, _, body = request(server, "POST", "/predict", json.dumps({"texts": [surnames[i]], "top_k": 2}))
        assert status == 200, body
        answers[i] = json.loads(body)["predictions"][0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cli = subprocess.run(
        [*PIPELINE, "predict", "--bundle", bundle, "--top-k", "2", *surnames[:60]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    for i, line in enumerate(cli.stdout.splitlines()):
        want = json.loads(line)
        got = answers[i]
        assert got["label"] == want["label"] and [t["label"] for t in got["top_k"]] == [
            t["label"] for t in want["top_k"]
        ]
        assert got["score"] == pytest.approx(want["score"], abs=1e-6), (surnames[i], got, want)


def test_per_text_errors_are_named_and_the_other_texts_still_scored(server, local):
    texts = ["Nguyen", "", "Schmidt", "  "]
    status, _, body = request(server, "POST", "/v2/models/names/infer", infer_body(texts))
    assert status == 400 and "text #1 is empty" in json.loads(body)["error"]
    status, _, body = request(server, "POST", "/v2/models/names/infer", infer_body(texts, errors="return"))
    assert status == 200, body
    out = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
    assert out["label"] == [local.predict(["Nguyen"])[0].label, "", local.predict(["Schmidt"])[0].label, ""]
    assert out["error"][0] == out["error"][2] == "" and "text #1 is empty" in out["error"][1]
    assert out["error"][3].startswith("text #3 ")
    status, _, body = request(server, "POST", "/predict", json.dumps({"texts": ["Nguyen", None, ""]}))
    preds = json.loads(body)["predictions"]
    assert (
        status == 200
        and preds[0]["label"]
        and "text #1 is null" in preds[1]["error"]
        and "text #2 is empty" in preds[2]["error"]
    )


def _binary_infer(texts: list[bytes], size=None, header_length=None, shape=None):
    blob = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [len(texts) if shape is None else shape],
                    "parameters": {"binary_data_size": len(blob) if size is None else size},
                }
            ]
        }
    ).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head) if header_length is None else header_length)}


OK = infer_body(["Nguyen"])
BAD_REQUESTS = [  # (method, path, body, headers, status, what the error says)
    ("POST", "/v2/models/names/infer", b"{not json", {}, 400, "not valid JSON"),
    ("POST", "/v2/models/names/infer", b"[1, 2]", {}, 400, "JSON object"),
    ("POST", "/v2/models/names/infer", b'{"inputs": "Nguyen"}', {}, 400, "'inputs' must be a list"),
    ("POST", "/v2/models/names/infer", b"\xff\xfe{}", {}, 400, "not UTF-8"),
    ("POST", "/v2/models/names/infer", b"[" * 1100, {}, 400, "nests too deeply"),
    ("POST", "/v2/models/names/infer", b"[" * 60_000, {}, 413, "more than 1152 JSON values"),
    ("POST", "/v2/models/names/infer", OK.replace(b'"BYTES"', b'"FP32"'), {}, 400, "datatype 'FP32'"),
    ("POST", "/v2/models/names/infer", OK.replace(b"[1]", b"[1, 3]"), {}, 400, "shape [1, 3]"),
    ("POST", "/v2/models/names/infer", OK.replace(b"[1]", b"[2]"), {}, 400, "shape says 2 texts, 'data' holds 1"),
    ("POST", "/v2/models/names/infer", OK.replace(b'"text"', b'"txt"'), {}, 400, "unknown input 'txt'"),
    (
        "POST",
        "/v2/models/names/infer",
        OK.replace(b"[1]", b"[1, 1]").replace(b'["Nguyen"]', b'[[["Nguyen"]]]'),
        {},
        400,
        "nests deeper than",
    ),
    ("POST", "/v2/models/names/infer", infer_body(["a", 7]), {}, 400, "text #1 is a number"),
    ("POST", "/v2/models/names/infer", infer_body(["a"], top_k=99), {}, 400, "top_k must be an integer from 1 to"),
    ("POST", "/v2/models/names/infer", infer_body(["a"], errors="skip"), {}, 400, "parameters.errors"),
    ("POST", "/v2/models/names/infer", infer_body([]), {}, 400, "no texts"),
    (
        "POST",
        "/v2/models/names/infer",
        OK[:-1] + b', "outputs": [{"name": "logits"}]}',
        {},
        400,
        "unknown output 'logits'",
    ),
    ("POST", "/v2/models/names/infer", *_binary_infer([b"ok", b"\xffbad"]), 400, "text #1: not UTF-8"),
    ("POST", "/v2/models/names/infer", *_binary_infer([b"Nguyen"], size=3), 400, "binary_data_size 3"),
    ("POST", "/v2/models/names/infer", *_binary_infer([b"a", b"b", b"c"], shape=1), 400, "holds more than 1"),
    (
        "POST",
        "/v2/models/names/infer",
        *_binary_infer([b"Nguyen"], header_length=10**9),
        400,
        "Inference-Header-Content-Length",
    ),
    ("POST", "/v2/models/names/infer", infer_body(["a"] * 65), {}, 413, "limit is 64 (--max-texts)"),
    ("POST", "/v2/models/names/infer", infer_body(["x" * 70_000]), {}, 413, "--max-body-bytes"),
    (
        "POST",
        "/v2/models/names/infer",
        iter([b" " * 40_000] * 2),
        {"Transfer-Encoding": "chunked"},
        413,
        "--max-body-bytes",
    ),
    ("POST", "/v2/models/names/infer", gzip.compress(b" " * 10**6), {"Content-Encoding": "gzip"}, 413, "inflates past"),
    ("POST", "/v2/models/names/infer", b"garbage", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    ("POST", "/v2/models/names/infer", OK, {"Content-Encoding": "br"}, 415, "'br' is not supported"),
    ("POST", "/v2/models/nope/infer", OK, {}, 404, "unknown model 'nope'; this server has names"),
    ("POST", "/v2/models/names/versions/2/infer", OK, {}, 404, "no version '2'"),
    ("GET", "/v2/models/nope", None, {}, 404, "unknown model"),
    ("GET", "/v2/nothing", None, {}, 404, "no such path"),
    ("GET", "/v2/models/names/infer", None, {}, 405, "GET is not allowed"),
    ("POST", "/v2/models/names/infer", OK[:-1] + b', "outputs": [{"name": ["label"]}]}', {}, 400, "unknown output"),
    (
        "POST",
        "/v2/models/names/infer",
        OK[:-1] + b', "outputs": [{"name": "label"}, {"name": "label"}]}',
        {},
        400,
        "asked for twice",
    ),
    ("POST", "/v2/models/names/infer", OK[:-1] + b', "parameters": []}', {}, 400, "'parameters' must be an object"),
    ("POST", "/v2/models/names/infer", gzip.compress(OK)[:-6], {"Content-Encoding": "gzip"}, 400, "truncated"),
    (
        "POST",
        "/v2/models/names/infer",
        gzip.compress(b"", mtime=0) * 3000,
        {"Content-Encoding": "gzip"},
        400,
        "more than 16 members",
    ),
    ("POST", "/v2/models/names/infer/", OK, {}, 404, "no such path"),
    ("POST", "/predict", b'{"texts": "Nguyen"}', {}, 400, 'send {"texts"'),
    ("POST", "/predict", b'{"texts": ["a"], "model": "nope"}', {}, 404, "unknown model 'nope'"),
]


@pytest.mark.parametrize(
    "method, path, body, headers, status, needle", BAD_REQUESTS, ids=[f"{c[4]}-{c[5][:28]}" for c in BAD_REQUESTS]
)
def test_a_bad_request_gets_its_status_and_a_message_never_a_traceback(
    server, method, path, body, headers, status, needle
):
    kwargs = {"encode_chunked": True} if headers.get("Transfer-Encoding") == "chunked" else {}
    c = server.conn()
    c.request(method, path, body=body, headers=headers, **kwargs)
    r = c.getresponse()
    got = r.read()
    assert r.status == status, got
    assert r.getheader("content-type") == "application/json"
    assert needle in json.loads(got)["error"]
    c.close()


def test_mangled_requests_never_get_a_500(server, surnames):
    """Seeded random damage to valid requests (JSON and binary): a 200 or a 4xx JSON error, always."""
    rng = random.Random(7)
    bodies = [(infer_body(surnames[:5], top_k=2), {}), _binary_infer([s.encode() for s in surnames[:5]])]
    c = server.conn()
    seen = set()
    for _ in range(300):
        body, headers = rng.choice(bodies)
        b = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            op, at = rng.randrange(3), rng.randrange(len(b))
            if op == 0:
                b[at] = rng.randrange(256)
            elif op == 1:
                del b[at : at + rng.randint(1, 8)]
            else:
                b[at:at] = bytes(rng.choice(b'[]{}",:0\\\xff') for _ in range(rng.randint(1, 3)))
        c.request("POST", "/v2/models/names/infer", body=bytes(b), headers=headers)
        r = c.getresponse()
        got = r.read()
        seen.add(r.status)
        assert r.status == 200 or 400 <= r.status < 500, (bytes(b), got)
        assert json.loads(got) if r.status == 200 else json.loads(got)["error"]
    assert 400 in seen


def test_metrics_count_requests_errors_latency_and_batch_sizes(server):
    request(server, "POST", "/v2/models/names/infer", infer_body(["Nguyen", "Smith"]))
    request(server, "POST", "/v2/models/nope/infer", OK)
    status, headers, body = request(server, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")

    def value(name, **labels):
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    assert value("seqship_requests_total", code="200", endpoint="infer") >= 1
    assert value("seqship_request_errors_total", code="404", endpoint="infer") >= 1
    assert value("seqship_request_duration_seconds_count", endpoint="infer") >= 2
    assert (
        value("seqship_batch_texts_count", model="names") >= 1 and value("seqship_batch_texts_sum", model="names") >= 2
    )
    assert value("seqship_texts_total", model="names", outcome="scored") >= 2
    assert "nope" not in text  # an unknown name never becomes a label value


# ---------------------------------------------------------------------------------------- the batcher, in-process


def _batcher(local, **limits):
    from seqship.runtime.serve.batching import Batcher
    from seqship.runtime.serve.metrics import Metrics
    from seqship.runtime.serve.protocol import Limits, Served

    metrics = Metrics()
    served = Served("names", Path("."), local)
    return Batcher(served, Limits(**limits), metrics), metrics


def _sample(metrics, name):
    return metrics.registry.get_sample_value(name, {"model": "names"}) or 0


@pytest.mark.parametrize("max_batch, batches", [(8, 1), (1, 8)])
def test_concurrent_requests_are_coalesced_up_to_max_batch(local, surnames, max_batch, batches):
    """Eight requests waiting together: one batch of 8 texts (max_batch 8), or eight of 1 (max_batch 1: off)."""
    batcher, metrics = _batcher(local, max_batch=max_batch, max_delay_ms=60_000)

    async def main():
        batcher.start()
        got = await asyncio.gather(*[batcher.submit([t], 1 + i % 3) for i, t in enumerate(surnames[:8])])
        await batcher.close(5)
        return got

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert _sample(metrics, "seqship_batch_texts_count") == batches and _sample(metrics, "seqship_batch_texts_sum") == 8
    for i, (t, [p]) in enumerate(zip(surnames, got)):
        want = local.predict([t], top_k=1 + i % 3)[0]
        assert len(p.top_k) == 1 + i % 3 and [lab for lab, _ in p.top_k] == [lab for lab, _ in want.top_k]
        assert p.score == pytest.approx(want.score, abs=1e-6)


def test_a_request_larger_than_max_batch_is_a_batch_of_its_own(local, surnames):
    batcher, metrics = _batcher(local, max_batch=4, max_delay_ms=60_000)

    async def main():
        batcher.start()
        got = await asyncio.gather(batcher.submit(surnames[:10], 1), batcher.submit(surnames[10:14], 1))
        await batcher.close(5)
        return got

    big, small = asyncio.run(asyncio.wait_for(main(), 60))
    assert _sample(metrics, "seqship_batch_texts_count") == 2 and _sample(metrics, "seqship_batch_texts_sum") == 14
    assert [p.label for p in big + small] == [p.label for p in local.predict(surnames[:14])]


def test_a_full_queue_and_a_timeout_are_503s_and_a_timed_out_request_is_not_scored(local, surnames):
    from seqship.runtime.serve.protocol import HTTPError

    batcher, metrics = _batcher(local, max_queue_texts=4, timeout_s=0.05)

    async def main():  # the batching loop is not started: nothing is scored
        results = await asyncio.gather(
            batcher.submit(surnames[:4], 1), batcher.submit(surnames[4:5], 1), return_exceptions=True
        )
        batcher.start()
        await batcher.close(5)
        return results

    timed_out, refused = asyncio.run(asyncio.wait_for(main(), 60))
    assert isinstance(refused, HTTPError) and refused.status == 503 and "4 texts waiting" in refused.message
    assert refused.headers == {"Retry-After": "1"}
    assert isinstance(timed_out, HTTPError) and timed_out.status == 503 and "not scored within" in timed_out.message
    assert _sample(metrics, "seqship_batch_texts_count") == 0


# ---------------------------------------------------------------------------------------- start-up, load, drain


def test_start_up_refuses_a_damaged_or_unpinned_bundle_before_listening(bundle_copy, tmp_path):
    pin = "0" * 64
    p = subprocess.run(
        [*PIPELINE, "serve", "--bundle", str(bundle_copy), "--expect-sha256", pin, "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr and pin in p.stderr and "serving" not in p.stdout
    (bundle_copy / "model.onnx").write_bytes((bundle_copy / "model.onnx").read_bytes()[:-1] + b"\0")
    p = subprocess.run(
        [*PIPELINE, "serve", "--bundle", str(bundle_copy), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "model.onnx" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(
        [*PIPELINE, "serve", "--bundle", str(tmp_path), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "no manifest.json" in p.stderr


def test_two_bundles_under_one_name_are_refused_and_named_ones_are_served(bundle):
    p = subprocess.run(
        [*PIPELINE, "serve", "--bundle", bundle, "--bundle", bundle, "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "two bundles are named" in p.stderr and "--bundle a=" in p.stderr
    s = Server("--bundle", f"a={bundle}", "--bundle", f"b={bundle}")
    try:
        for name in ("a", "b"):
            status, _, body = request(s, "POST", f"/v2/models/{name}/infer", OK)
            assert status == 200 and json.loads(body)["model_name"] == name
        status, _, body = request(s, "POST", "/predict", b'{"texts": ["x"]}')
        assert status == 400 and "name one" in json.loads(body)["error"]
    finally:
        assert s.stop()[0] == 0


def test_without_the_serve_extra_serve_says_how_to_install_it(bundle, tmp_path):
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('starlette', 'uvicorn', 'prometheus_client'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from seqship.pipeline.cli import main\n"
        "sys.argv[0] = 'pipeline'\n"
        "main()\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", blocker, "serve", "--bundle", bundle, "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "`serve` extra" in p.stderr and "Traceback" not in p.stderr


def hey_command(url: str, body: Path, seconds: int, connections: int) -> list[str]:
    """The benchmark's hey command line; a missing `hey` fails the test with the fix."""
    from seqship.pipeline.bench.serve import hey_command

    if shutil.which("hey") is None:
        pytest.fail("the load test needs `hey`: apt-get install -y hey (install.sh does)")
    return hey_command(url, body, seconds, connections)


@pytest.mark.slow
def test_64_connections_for_20_seconds_every_request_answered_without_error(server, tmp_path):
    body = tmp_path / "body.json"
    body.write_bytes(infer_body(["Nguyen", "Schmidt"]))

    def answered():
        text = request(server, "GET", "/metrics")[2].decode()
        m = re.search(r'^seqship_requests_total\{code="200",endpoint="infer"\} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    before = answered()
    p = subprocess.run(
        hey_command(f"{server.url}/v2/models/names/infer", body, seconds=20, connections=64),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "Error distribution" not in p.stdout, p.stdout
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", p.stdout))
    assert list(codes) == ["200"] and int(codes["200"]) > 64, p.stdout
    assert answered() - before == int(codes["200"])


def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(bundle):
    """Sixteen keep-alive clients hammer a fresh server; SIGTERM lands mid-load. The server must answer
    every request it accepted (its own tally), and the clients must have received exactly that many 200s."""
    s = Server("--bundle", f"m={bundle}", "--max-batch", "16")
    load = KeepAliveClients(s, infer_body(["Nguyen", "Schmidt", "Rossi"]))
    load.wait_for(300)
    load.terminating()
    code, err = s.stop(signal.SIGTERM)
    load.stop()
    assert code == 0, err
    assert "SIGTERM: draining" in err
    m = re.search(r"stopped: (\d+) requests accepted, (\d+) answered", err)
    assert m and m.group(1) == m.group(2), err
    assert load.failures == [] and load.ok == int(m.group(2)) >= 300, (load.ok, load.failures, err)


def test_sigint_with_nothing_in_flight_drains_and_exits_0(bundle):
    s = Server("--bundle", bundle)
    assert request(s, "GET", "/v2/health/live")[0] == 200
    code, err = s.stop(signal.SIGINT)
    assert code == 0 and "stopped: 1 requests accepted, 1 answered" in err, err


def test_the_port_in_use_is_one_error_line(server, bundle):
    p = subprocess.run(
        [*PIPELINE, "serve", "--bundle", bundle, "--host", server.host, "--port", server.port],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        p.returncode == 1
        and f"cannot listen on {server.host}:{server.port}" in p.stderr
        and "Traceback" not in p.stderr
    )


def test_gzip_of_several_members_is_read_whole_and_classification_does_not_widen_top_k(server, local):
    body = gzip.compress(OK[:20]) + gzip.compress(OK[20:])  # RFC 1952: members concatenate
    status, _, got = request(server, "POST", "/v2/models/names/infer", body, {"Content-Encoding": "gzip"})
    assert status == 200 and json.loads(got)["outputs"][0]["data"] == [local.predict(["Nguyen"])[0].label]
    req = json.loads(OK)
    req["outputs"] = [{"name": "top_k_labels"}, {"name": "score", "parameters": {"classification": 3}}]
    status, _, got = request(server, "POST", "/v2/models/names/infer", json.dumps(req))
    out = {o["name"]: o for o in json.loads(got)["outputs"]}
    assert status == 200 and out["top_k_labels"]["shape"] == [1, 1] and out["score"]["shape"] == [1, 3]


def _raw(server: Server, data: bytes) -> socket.socket:
    sock = socket.create_connection((server.host, int(server.port)), timeout=60)
    sock.sendall(data)
    return sock


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


@pytest.mark.slow
def test_slow_silent_and_vanishing_clients_are_closed_and_never_counted_as_server_errors(bundle):
    s = Server("--bundle", f"m={bundle}", "--timeout-s", "1")
    try:
        head = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        slow = _raw(s, head + b'{"inp')  # the body never completes: 408, then the connection is closed
        answer = _read_to_close(slow)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
        silent = _raw(s, b"")  # never sends a request line
        assert _read_to_close(silent) == b""
        partial = _raw(s, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        assert _read_to_close(partial) == b""
        _raw(s, head + b'{"inp').close()  # the client goes away mid-body
        text = b""
        while b'code="499"' not in text:  # its handler notices the disconnect when it next reads
            text = request(s, "GET", "/metrics")[2]
        assert b'code="500"' not in text and b'seqship_request_errors_total{code="499"' not in text
    finally:
        code, err = s.stop()
    assert code == 0 and "Traceback" not in err, err


def test_drain_delay_keeps_answering_with_readiness_503_until_the_listener_closes(bundle):
    s = Server("--bundle", f"m={bundle}", "--drain-delay-s", "600")
    s.send(signal.SIGTERM)
    while request(s, "GET", "/v2/health/ready")[0] == 200:  # the signal is handled on the next loop turn
        time.sleep(0.05)
    status, _, body = request(s, "GET", "/v2/health/ready")
    assert status == 503 and "draining" in json.loads(body)["error"]
    assert request(s, "GET", "/v2/models/m/ready")[0] == 503
    assert request(s, "POST", "/v2/models/m/infer", OK)[0] == 200  # still accepted and answered
    code, err = s.stop(signal.SIGTERM)  # a second signal ends the delay: the drain proper
    assert code == 0 and "accepting for 600 s more" in err, err
    m = re.search(r"stopped: (\d+) requests accepted, (\d+) answered", err)
    assert m and m.group(1) == m.group(2), err


def test_a_drain_cut_short_answers_503_with_retry_after_and_exits_1(bundle, surnames):
    """30 requests wait in a batch that waits 60 s for company; a 0.2 s drain cannot score them: each gets a JSON
    503 with Retry-After (never uvicorn's plain 500), and the exit code says the drain was cut short."""
    s = Server(
        "--bundle",
        f"m={bundle}",
        "--max-batch",
        "4096",
        "--max-delay-ms",
        "60000",
        "--timeout-s",
        "120",
        "--drain-timeout-s",
        "0.2",
    )
    body = infer_body(surnames[:100])
    answers, lock = [], threading.Lock()

    def call():
        status, headers, got = request(s, "POST", "/v2/models/m/infer", body)
        with lock:
            answers.append((status, headers, got))

    threads = [threading.Thread(target=call) for _ in range(30)]
    for t in threads:
        t.start()
    while not re.search(rb"^seqship_queue_texts\{model=\"m\"\} 3000\.0$", request(s, "GET", "/metrics")[2], re.M):
        time.sleep(0.02)  # all 30 requests accepted and queued
    code, err = s.stop(signal.SIGTERM)
    for t in threads:
        t.join(timeout=60)
    statuses = sorted(a[0] for a in answers)
    assert len(answers) == 30 and set(statuses) <= {200, 503} and 503 in statuses, statuses
    for status, headers, got in answers:
        if status == 503:
            assert headers["retry-after"] == "1" and "--drain-timeout-s ran out" in json.loads(got)["error"]
    assert code == 1 and "because the drain was cut short" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_the_whole_drain_keeps_to_one_drain_timeout(bundle):
    """An idle keep-alive connection (given a grace to send one more request) and a request whose body never
    comes, at SIGTERM with --drain-timeout-s 3: the grace, the wait for requests in flight and the batchers'
    close share the one deadline (each step counted from its own start made it 5 s), and the request cut off
    by it gets its 503."""
    s = Server("--bundle", f"m={bundle}", "--drain-timeout-s", "3")
    idle = s.conn()
    idle.request("GET", "/v2/health/live")
    assert idle.getresponse().read() == b'{"live":true}'
    slow = _raw(s, b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    while _metric(s, "seqship_requests_in_flight") < 2:  # the slow one, and this scrape
        time.sleep(0.02)
    code, err = s.stop(signal.SIGTERM)
    assert _read_to_close(slow).startswith(b"HTTP/1.1 503")
    idle.close()
    drained = float(re.search(r"drained in (\S+) s", err).group(1))
    assert drained < 3.5 and code == 1 and "1 of them with 503 because the drain was cut short" in err, err


def test_signals_that_keep_coming_while_the_server_exits_never_turn_a_clean_drain_into_143(bundle):
    s = Server("--bundle", bundle)
    s.send(signal.SIGTERM)
    while s.proc.poll() is None:  # SIGTERM every 5 ms until the process is gone, teardown included
        with contextlib.suppress(ProcessLookupError):
            s.send(signal.SIGTERM)
        time.sleep(0.005)
    s.reader.join(timeout=30)
    assert s.proc.returncode == 0, "".join(s.err)


# ---------------------------------------------------------------------------------------- bounded time and memory


def _metric(server: Server, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", request(server, "GET", "/metrics")[2].decode(), re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.slow
def test_gzip_bombs_of_tiny_json_values_are_refused_unparsed_while_health_keeps_answering(bundle):
    """Three clients send 8 KB gzip bodies that inflate, within the body limit, to millions of tiny JSON values
    (each took the event loop seconds to parse); each gets a 413 naming the limit (not a shape error: the
    values were never built), and readiness probes are answered meanwhile."""
    s = Server("--bundle", f"m={bundle}", "--threads", "1")  # the defaults: 8 MiB bodies, 1024 texts a request
    head = b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["Nguyen",'
    bombs = [gzip.compress(head + unit * ((8 << 20) // len(unit) - 40) + b"0]}]}") for unit in (b"[],", b"0,")]
    bombs.append(gzip.compress(b'{"texts": [' + b'"",' * 2_000_000 + b'""]}'))
    answers, probes, lock = [], [], threading.Lock()

    def attack(bomb, path):
        c = s.conn()
        for _ in range(4):
            c.request("POST", path, body=bomb, headers={"Content-Encoding": "gzip"})
            r = c.getresponse()
            with lock:
                answers.append((r.status, json.loads(r.read())["error"]))

    try:
        paths = ["/v2/models/m/infer", "/v2/models/m/infer", "/predict"]
        threads = [threading.Thread(target=attack, args=a) for a in zip(bombs, paths)]
        for t in threads:
            t.start()
        c = s.conn()
        while any(t.is_alive() for t in threads):
            c.request("GET", "/v2/health/ready")
            r = c.getresponse()
            probes.append((r.status, r.read()))
        for t in threads:
            t.join()
    finally:
        assert s.stop()[0] == 0
    assert all(len(b) < 20_000 for b in bombs)
    assert len(answers) == 12 and {a[0] for a in answers} == {413}, answers
    assert all("more than 3072 JSON values" in a[1] and "--max-texts" in a[1] for a in answers), answers
    assert probes and set(probes) == {(200, b'{"ready":true}')}


def test_unfinished_bodies_spend_the_buffer_budget_then_503_and_leaving_returns_it(bundle):
    """Four connections send half of a 1 MiB body each and stop: with --max-buffered-bytes 4 MiB the budget is
    spent, so the next body is refused at once (503, Retry-After, naming the option) without a byte of it read;
    once they disconnect, their bytes are returned and a request is answered again."""
    s = Server("--bundle", f"m={bundle}", "--max-body-bytes", str(1 << 20), "--max-buffered-bytes", str(4 << 20))
    head = f"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 20}\r\n\r\n".encode()
    try:
        holders = [_raw(s, head + b" " * (1 << 19)) for _ in range(4)]
        while _metric(s, "seqship_buffered_body_bytes") < 4 << 20:
            time.sleep(0.02)
        status, headers, got = request(s, "POST", "/v2/models/m/infer", OK)
        assert status == 503 and headers["retry-after"] == "1", got
        assert "the limit is 4194304 (--max-buffered-bytes)" in json.loads(got)["error"]
        late = _raw(s, head)  # only its headers: the answer cannot wait for a body
        assert _read_to_close(late).startswith(b"HTTP/1.1 503")
        c = s.conn()  # a chunked body is refused as it arrives
        c.request("POST", "/predict", body=iter([b'{"texts": ["Nguyen"]}']), encode_chunked=True)
        assert c.getresponse().status == 503
        assert request(s, "GET", "/v2/health/ready")[0] == 200  # requests without a body are not affected
        for h in holders:
            h.close()
        while _metric(s, "seqship_buffered_body_bytes") > 0:  # each handler sees its client gone on its next read
            time.sleep(0.02)
        status, _, got = request(s, "POST", "/v2/models/m/infer", OK)
        assert status == 200, got
        for _ in range(3):  # and the budget is whole again: four more fit
            more = [_raw(s, head + b" " * 100) for _ in range(4)]
            while _metric(s, "seqship_buffered_body_bytes") < 4 << 20:
                time.sleep(0.02)
            for h in more:
                h.close()
            while _metric(s, "seqship_buffered_body_bytes") > 0:
                time.sleep(0.02)
    finally:
        code, err = s.stop()
    assert code == 0 and "Traceback" not in err, err


@pytest.mark.parametrize(
    "options, named",
    [
        (["--max-delay-ms", "60000"], ["--max-delay-ms 60000", "--timeout-s 30"]),
        (["--max-delay-ms=1000", "--timeout-s=1"], ["--max-delay-ms 1000", "--timeout-s 1"]),
        (["--max-delay-ms", "2500.5", "--timeout-s", "2.5"], ["--max-delay-ms 2500.5", "--timeout-s 2.5"]),
        (["--max-queue-texts", "100"], ["--max-texts 1024", "--max-queue-texts 100"]),
        (["--max-texts", "9000"], ["--max-texts 9000", "--max-queue-texts 8192"]),
        (["--max-buffered-bytes", str(8 << 20)], [f"--max-buffered-bytes {8 << 20}", f"--max-body-bytes {8 << 20}"]),
        (
            ["--max-body-bytes", str(1 << 30), "--max-buffered-bytes", str(1 << 30)],
            ["less than twice --max-body-bytes", str(2 << 30)],
        ),
    ],
)
def test_serve_refuses_options_that_cannot_answer_a_lone_request_before_loading_a_bundle(options, named, tmp_path):
    from tests.conftest import invoke

    result = invoke("serve", "--bundle", str(tmp_path / "no-such-bundle"), "--port", "0", *options)
    assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
    assert all(n in result.output for n in named) and "no-such-bundle" not in result.output, result.output


def test_a_lone_request_is_answered_by_an_idle_server_at_the_edge_of_the_limits(bundle):
    """Before, --max-delay-ms 2000 --timeout-s 1 started a server whose every lone request timed out (503)."""
    s = Server(
        "--bundle",
        f"m={bundle}",
        "--max-delay-ms",
        "300",
        "--timeout-s",
        "1",
        "--max-texts",
        "8",
        "--max-queue-texts",
        "8",
    )
    try:
        assert request(s, "POST", "/predict", json.dumps({"texts": ["Nguyen"] * 8}))[0] == 200
    finally:
        assert s.stop()[0] == 0


def test_a_drain_answers_with_connection_close_and_an_idle_keep_alive_connection_may_still_send(bundle):
    """Keep-alive connections during a drain: each answer says `Connection: close` (the client reconnects, to the
    next server), and a connection idle when the listener closes still gets its next request answered instead of
    an EOF or a reset."""
    s = Server("--bundle", f"m={bundle}", "--drain-delay-s", "600")
    busy, idle = s.conn(), s.conn()
    for c in (busy, idle):
        c.request("POST", "/v2/models/m/infer", body=OK)
        r = c.getresponse()
        assert r.status == 200 and r.getheader("connection") is None and r.read()
    s.send(signal.SIGTERM)
    while (answer := request(s, "GET", "/v2/health/ready"))[0] == 200:
        time.sleep(0.02)
    assert answer[0] == 503 and answer[1]["connection"] == "close"
    busy.request("POST", "/v2/models/m/infer", body=OK)
    r = busy.getresponse()
    assert r.status == 200 and r.getheader("connection") == "close" and r.read()
    assert busy.sock is None  # http.client closed it, as the answer asked
    s.send(signal.SIGTERM)  # the delay ends: the listener closes
    while True:
        try:
            request(s, "GET", "/v2/health/live")
        except ConnectionRefusedError:
            break
    idle.request("POST", "/v2/models/m/infer", body=OK)
    r = idle.getresponse()
    assert r.status == 200 and r.getheader("connection") == "close" and json.loads(r.read())["outputs"]
    code, err = s.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in err, err


@pytest.mark.slow
def test_sigterm_under_hey_with_32_keep_alive_connections_refuses_but_never_resets(bundle, tmp_path):
    """hey keeps 32 keep-alive connections busy; SIGTERM lands mid-load. Every request is answered 200, and the
    only errors are connections refused once the listener closed: no EOF, no reset."""
    s = Server("--bundle", f"m={bundle}", "--threads", "2")
    body = tmp_path / "body.json"
    body.write_bytes(infer_body(["Nguyen", "Schmidt"]))
    load = subprocess.Popen(
        hey_command(f"{s.url}/v2/models/m/infer", body, seconds=8, connections=32),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while _metric(s, r'seqship_requests_total\{code="200",endpoint="infer"\}') < 500:
            time.sleep(0.05)
    finally:
        code, err = s.stop(signal.SIGTERM)
        out, _ = load.communicate(timeout=120)
    assert code == 0 and re.search(r"stopped: (\d+) requests accepted, \1 answered", err), err
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    assert list(codes) == ["200"] and int(codes["200"]) >= 500, out
    errors = re.findall(r"^\s+\[\d+\]\s+(.+)$", out.partition("Error distribution:")[2], re.M)
    assert all("connect: connection refused" in e for e in errors), errors
