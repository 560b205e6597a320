"""`pipeline serve --grpc-port`: Triton's gRPC service, driven by the real outside client (tritonclient.grpc) and
by raw messages over a real channel, against a real server process."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import REPO
from tests.serving.test_serve import PIPELINE, Server, _metric


@pytest.fixture(scope="module")
def bundle(tiny_run) -> str:
    return tiny_run[1]["bundle"]


@pytest.fixture(scope="module")
def surnames(data_dir) -> list[str]:
    names = []
    for f in sorted((data_dir / "names").glob("*.txt")):
        names += [n.strip() for n in f.read_text(encoding="utf-8").splitlines() if n.strip()][:3]
    return names[:40]


@pytest.fixture(scope="module")
def server(bundle):
    s = Server("--bundle", f"names={bundle}", "--grpc-port", "0", "--max-texts", "64", "--max-body-bytes", "65536")
    yield s
    code, err = s.stop()
    assert code == 0, err
    assert re.search(r"stopped: (\d+) requests accepted, \1 answered", err), err


def pipeline_predict(bundle: str, texts: list[str], top_k: int) -> list[dict]:
    cli = subprocess.run(
        [*PIPELINE, "predict", "--bundle", bundle, "--top-k", str(top_k), *texts],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in cli.stdout.splitlines()]


def texts_input(texts: list[str]) -> triton.InferInput:
    inp = triton.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return inp


def test_tritonclient_grpc_answers_as_pipeline_predict_does(server, bundle, surnames):
    client = triton.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("names")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("names", as_json=True)
    assert meta["versions"] == ["1"] and meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]}["top_k_scores"] == "FP32"
    assert client.get_server_metadata(as_json=True)["extensions"] == ["binary_tensor_data", "classification"]

    want = pipeline_predict(bundle, surnames, 3)
    got = client.infer("names", [texts_input(surnames)], parameters={"top_k": 3}, request_id="g-1")
    response = got.get_response()
    assert response.id == "g-1" and response.model_version == "1"
    assert [b.decode() for b in got.as_numpy("label")] == [w["label"] for w in want]
    np.testing.assert_allclose(got.as_numpy("score"), [w["score"] for w in want], atol=1e-6)
    assert [[b.decode() for b in row] for row in got.as_numpy("top_k_labels")] == [
        [t["label"] for t in w["top_k"]] for w in want
    ]
    # the classification extension, as over HTTP: "probability:class index:label", best first
    labels = json.loads((Path(bundle) / "manifest.json").read_text())["labels"]
    outs = [triton.InferRequestedOutput("score", class_count=2), triton.InferRequestedOutput("num_tokens")]
    got = client.infer("names", [texts_input(surnames)], outputs=outs)
    rows = [[c.decode().split(":") for c in row] for row in got.as_numpy("score")]
    assert [[(int(i), lab) for _, i, lab in row] for row in rows] == [
        [(labels.index(t["label"]), t["label"]) for t in w["top_k"][:2]] for w in want
    ]
    assert [float(p) for row in rows for p, _, _ in row] == pytest.approx(
        [t["score"] for w in want for t in w["top_k"][:2]], abs=1e-6
    )
    assert got.as_numpy("num_tokens").dtype == np.int64 and "label" not in {o.name for o in got.get_response().outputs}
    stats = client.get_inference_statistics("names", as_json=True)["model_stats"][0]
    assert stats["name"] == "names" and int(stats["inference_count"]) >= 2 * len(surnames)


def test_texts_in_contents_rather_than_raw_bytes_are_read_too(server):
    """A client that fills `contents.bytes_contents` (not tritonclient's raw_input_contents) gets the same answer."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc))
    req = service_pb2.ModelInferRequest(model_name="names")
    t = req.inputs.add(name="text", datatype="BYTES", shape=[2])
    t.contents.bytes_contents.extend([b"Nguyen", b"Schmidt"])
    req.outputs.add(name="label")
    got = stub.ModelInfer(req, timeout=30)
    client = triton.InferenceServerClient(server.grpc)
    want = client.infer("names", [texts_input(["Nguyen", "Schmidt"])]).as_numpy("label")
    assert got.model_version == "1" and got.raw_output_contents[0] == b"".join(
        len(b).to_bytes(4, "little") + b for b in want
    )


@pytest.mark.parametrize(
    "case, code, message",
    [
        ("oversized", grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
        ("too many texts", grpc.StatusCode.RESOURCE_EXHAUSTED, "65 texts in one request; the limit is 64"),
        ("datatype", grpc.StatusCode.INVALID_ARGUMENT, "datatype 'FP32'; texts are sent as BYTES"),
        ("shape", grpc.StatusCode.INVALID_ARGUMENT, "shape says 3 elements, the binary data holds 2"),
        ("not utf-8", grpc.StatusCode.INVALID_ARGUMENT, "text #1: not UTF-8"),
        ("unknown model", grpc.StatusCode.NOT_FOUND, "unknown model 'nope'; this server has names"),
        ("unknown version", grpc.StatusCode.NOT_FOUND, "model 'names' has no version '7'"),
        ("top_k", grpc.StatusCode.INVALID_ARGUMENT, "parameters.top_k must be an integer from 1 to"),
        ("repository", grpc.StatusCode.UNAVAILABLE, "start it with --model-repository DIR"),
        # small on the wire, costly to walk: refused by counting, before anything is converted on the event loop
        ("many empty inputs", grpc.StatusCode.INVALID_ARGUMENT, "the request holds 20001 inputs; a valid one"),
        ("many empty texts", grpc.StatusCode.RESOURCE_EXHAUSTED, "20000 texts in one request; the limit is 64"),
        # Triton's answer too: which of the two holds the texts would be a guess
        ("contents and raw", grpc.StatusCode.INVALID_ARGUMENT, "contents field must not be specified when using raw"),
    ],
)
def test_bad_calls_get_the_protocols_code_and_a_message_naming_what_is_wrong(server, case, code, message):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc))
    req = service_pb2.ModelInferRequest(model_name="names")
    t = req.inputs.add(name="text", datatype="BYTES", shape=[2])
    texts = [b"Nguyen", b"Schmidt"]
    call = stub.ModelInfer
    if case == "oversized":
        texts = [b"x" * 70_000, b"y"]
    elif case == "too many texts":
        t.shape[:] = [65]
        texts = [b"a"] * 65
    elif case == "datatype":
        t.datatype = "FP32"
    elif case == "shape":
        t.shape[:] = [3]
    elif case == "not utf-8":
        texts = [b"ok", b"\xff\xfe"]
    elif case == "unknown model":
        req.model_name = "nope"
    elif case == "unknown version":
        req.model_version = "7"
    elif case == "top_k":
        req.parameters["top_k"].int64_param = 0
    elif case == "many empty inputs":
        for _ in range(20_000):
            req.inputs.add()
    elif case == "many empty texts":
        t.contents.bytes_contents.extend([b""] * 20_000)
    elif case == "contents and raw":
        t.contents.bytes_contents.extend([b"Rossi", b"Kim"])
    elif case == "repository":
        call, req = stub.RepositoryModelLoad, service_pb2.RepositoryModelLoadRequest(model_name="names")
    if case != "repository":
        req.raw_input_contents.append(b"".join(len(x).to_bytes(4, "little") + x for x in texts))
    with pytest.raises(grpc.RpcError) as e:
        call(req, timeout=30)
    assert e.value.code() == code and message in e.value.details(), e.value.details()


@pytest.mark.slow
def test_a_call_past_its_deadline_is_never_scored_and_sigterm_answers_the_calls_in_flight(bundle):
    """Batches wait 1.5 s for company: a call with a 0.3 s deadline, and one its client cancels, leave the queue
    unscored; calls in flight when SIGTERM lands are answered, and the server exits 0 having answered every
    call it accepted."""
    s = Server("--bundle", f"names={bundle}", "--grpc-port", "0", "--max-delay-ms", "1500")
    client = triton.InferenceServerClient(s.grpc)
    scored = 'seqship_texts_total{model="names",outcome="scored"}'
    try:
        cancelled: list = []
        call = client.async_infer(
            "names", [texts_input(["Rossi"])], callback=lambda result, error: cancelled.append(error)
        )
        with pytest.raises(triton.InferenceServerException) as e:
            client.infer("names", [texts_input(["Nguyen"])], client_timeout=0.3)
        assert "DEADLINE_EXCEEDED" in str(e.value)
        call.cancel()  # and a call its client cancels
        time.sleep(2)  # past the batch's 1.5 s wait: had either call stayed queued, it would be scored by now
        assert _metric(s, scored) == 0 and _metric(s, 'seqship_batch_texts_count{model="names"}') == 0
        assert len(cancelled) == 1 and "CANCELLED" in str(cancelled[0])
        answered: list = []

        def call():
            answered.append(client.infer("names", [texts_input(["Schmidt", "Rossi"])], client_timeout=30))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        waited = time.monotonic() + 30
        while _metric(s, "seqship_requests_in_flight") < 5:  # the four calls, and this /metrics request
            assert time.monotonic() < waited, "the four calls never reached the server"
        s.send(signal.SIGTERM)
        for t in threads:
            t.join(timeout=30)
        code, err = s.stop()
    finally:
        s.proc.kill()
    assert len(answered) == 4 and all(list(a.as_numpy("label")) for a in answered)
    assert code == 0 and re.search(r"stopped: (\d+) requests accepted, \1 answered", err), err
    # the four calls count as HTTP requests do (the last scrape may not have been counted answered yet)
    assert int(re.search(r"SIGTERM: draining \((\d+) requests in flight\)", err).group(1)) >= 4, err


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_a_grpc_port_in_use_is_one_error_line(bundle, workers):
    # Held with SO_REUSEPORT, as another server's workers hold theirs: ours must not join it and answer half its calls
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = subprocess.run(
            [*PIPELINE, "serve", "--bundle", bundle, "--port", "0", "--grpc-port", str(port), *workers],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert p.returncode == 1 and f"cannot listen for gRPC on 127.0.0.1:{port}" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.count("Error:") == 1, p.stderr
