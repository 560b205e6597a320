"""`pipeline serve --model-repository`: Triton's layout, versions, hot reload under load (hey), refused and
half-written versions, and the explicit repository calls over HTTP and gRPC, against a real server process."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton

from seqship.runtime.bundle import bundle_digest
from tests.conftest import REPO
from tests.serving.test_serve import PIPELINE, Server, _metric, hey_command, infer_body, request

POLL = "0.2"


def add_version(repo: Path, bundle: str, version: int, created_at: str | None = None) -> str:
    """Copy `bundle` to repo/names/<version>/ (as a copy tool would: in place, file by file); a created_at
    gives the copy a digest of its own. Returns the version's bundle digest."""
    dst = repo / "names" / str(version)
    shutil.copytree(bundle, dst)
    if created_at is not None:
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["created_at"] = created_at
        (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle_digest(dst)


def until(what: str, check, timeout=30.0):
    """Wait for check() to be true (polled), failing with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def infer(server: Server, path="/v2/models/names/infer") -> tuple[int, dict]:
    status, _, body = request(server, "POST", path, infer_body(["Nguyen"]))
    return status, json.loads(body)


@pytest.fixture(scope="module")
def bundle(tiny_run) -> str:
    return tiny_run[1]["bundle"]


@pytest.fixture(scope="module")
def polled(bundle, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repository")
    first = add_version(repo, bundle, 1)
    s = Server("--model-repository", repo, "--model-control-mode", "poll", "--repository-poll-secs", POLL)
    yield s, repo, first
    code, err = s.stop()
    assert code == 0, err


@pytest.mark.slow
def test_a_version_added_under_load_drops_no_request_and_no_answer_mixes_versions(polled, bundle, tmp_path):
    s, repo, first = polled
    body = tmp_path / "body.json"
    body.write_bytes(infer_body(["Nguyen", "Schmidt"]))
    hey = subprocess.Popen(
        hey_command(f"{s.url}/v2/models/names/infer", body, seconds=6, connections=64),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[tuple[int, str, str]] = []
    stop = threading.Event()

    def watch():  # what one more client sees, answer by answer
        while not stop.is_set():
            status, answer = infer(s)
            seen.append((status, answer.get("model_version"), answer.get("parameters", {}).get("bundle_sha256")))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        time.sleep(1.5)
        second = add_version(repo, bundle, 2, created_at="2026-01-02T00:00:00Z")
        out, err = hey.communicate(timeout=120)
    finally:
        stop.set()
        watcher.join(timeout=60)
        hey.kill()
    assert hey.returncode == 0, err
    assert "Error distribution" not in out, out
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    assert list(codes) == ["200"], out
    assert {st for st, _, _ in seen} == {200}
    # each answer names one version, and the digest it carries is that version's
    assert set((v, d) for _, v, d in seen) <= {("1", first), ("2", second)}
    versions = [v for _, v, _ in seen]
    assert "2" in versions and "1" not in versions[versions.index("2") :]  # once loaded, the newest answers
    assert _metric(s, 'seqship_repository_loads_total{model="names"}') == 1
    assert infer(s, "/v2/models/names/versions/1/infer")[1]["model_version"] == "1"  # still served by number


@pytest.mark.slow
def test_a_broken_version_is_refused_a_half_written_one_waited_for_and_a_removed_one_unloaded(polled, bundle):
    s, repo, _ = polled
    until("version 2 (the test before)", lambda: infer(s)[1].get("model_version") == "2")
    # a version whose tokenizer was altered after packaging: refused, counted, and version 2 keeps serving
    add_version(repo, bundle, 3, created_at="2026-01-03T00:00:00Z")
    tok = repo / "names" / "3" / "tokenizer.json"
    data = bytearray(tok.read_bytes())
    data[100] ^= 1
    tok.write_bytes(bytes(data))
    failures = 'seqship_repository_load_failures_total{model="names"}'
    until("version 3 to be refused", lambda: _metric(s, failures) == 1)
    assert infer(s)[1]["model_version"] == "2"
    index = json.loads(request(s, "POST", "/v2/repository/index", b"{}")[2])
    row = next(r for r in index if r["version"] == "3")
    assert row["state"] == "UNAVAILABLE" and "tokenizer.json: sha256" in row["reason"]
    # a version still being copied: model.onnx half there; never loaded, never refused
    dst = repo / "names" / "4"
    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("model.onnx"))
    onnx = (Path(bundle) / "model.onnx").read_bytes()
    (dst / "model.onnx").write_bytes(onnx[: len(onnx) // 2])
    time.sleep(1.0)  # five polls
    assert infer(s)[1]["model_version"] == "2" and _metric(s, failures) == 1
    assert infer(s, "/v2/models/names/versions/4/infer")[0] == 404
    (dst / "model.onnx").write_bytes(onnx)  # the copy ends
    until("version 4 to load once complete", lambda: infer(s)[1].get("model_version") == "4")
    # a copy tool that writes each file at its full size first and its content later, restoring the source's
    # modification times: refused while the content is not there (once, not at every poll), loaded once it is
    dst = repo / "names" / "5"
    shutil.copytree(bundle, dst)
    (dst / "model.onnx").write_bytes(bytes(len(onnx)))
    shutil.copystat(Path(bundle) / "model.onnx", dst / "model.onnx")
    until("version 5 to be refused", lambda: _metric(s, failures) == 2)
    time.sleep(1.0)  # five polls
    assert infer(s)[1]["model_version"] == "4" and _metric(s, failures) == 2
    (dst / "model.onnx").write_bytes(onnx)
    shutil.copystat(Path(bundle) / "model.onnx", dst / "model.onnx")  # names, sizes and mtimes as refused
    until("version 5 to load once its content is there", lambda: infer(s)[1].get("model_version") == "5")
    # a removed version is unloaded; the others keep serving
    shutil.rmtree(repo / "names" / "1")
    until("version 1 to be unloaded", lambda: infer(s, "/v2/models/names/versions/1/infer")[0] == 404)
    meta = json.loads(request(s, "GET", "/v2/models/names")[2])
    assert meta["versions"] == ["2", "4", "5"] and _metric(s, failures) == 2
    # repository calls that change what is served are off in poll mode, and say how to turn them on
    status, _, answer = request(s, "POST", "/v2/repository/models/names/unload")
    assert status == 503 and "--model-control-mode explicit" in json.loads(answer)["error"]


def test_a_repository_that_disappears_keeps_its_versions_serving_and_says_so(bundle, tmp_path):
    # an unmounted volume is not "every model removed": nothing is unloaded, and the index says why it cannot list
    repo = tmp_path / "repository"
    add_version(repo, bundle, 1)
    s = Server("--model-repository", repo, "--model-control-mode", "poll", "--repository-poll-secs", POLL)
    try:
        repo.rename(tmp_path / "elsewhere")
        time.sleep(1.0)  # five polls
        assert infer(s)[0] == 200 and infer(s)[1]["model_version"] == "1"
        status, _, answer = request(s, "POST", "/v2/repository/index", b"{}")
        assert status == 503 and f"the model repository {repo} cannot be read" in json.loads(answer)["error"]
        (tmp_path / "elsewhere").rename(repo)
        assert json.loads(request(s, "POST", "/v2/repository/index", b"{}")[2])[0]["state"] == "READY"
    finally:
        code, err = s.stop()
    assert code == 0, err
    assert f"polling the model repository {repo} failed" in err


def test_in_poll_mode_a_version_refused_for_its_pin_loads_once_the_pin_is_added(bundle, tmp_path):
    repo, pins = tmp_path / "repository", tmp_path / "pins.txt"
    pins.write_text(f"names {add_version(repo, bundle, 1)}\n")
    s = Server("--model-repository", repo, "--model-control-mode", "poll", "--repository-poll-secs", POLL,
               "--repository-pins", pins)  # fmt: skip
    try:
        second = add_version(repo, bundle, 2, created_at="2026-01-02T00:00:00Z")
        failures = 'seqship_repository_load_failures_total{model="names"}'
        until("version 2 to be refused (not pinned)", lambda: _metric(s, failures) == 1)
        assert infer(s)[1]["model_version"] == "1"
        with open(pins, "a") as f:  # the folder is untouched: the pins file alone changed
            f.write(f"names {second}\n")
        until("version 2 to load once pinned", lambda: infer(s)[1].get("model_version") == "2")
    finally:
        code, err = s.stop()
    assert code == 0, err


def test_explicit_mode_loads_and_unloads_on_request_over_http_and_grpc_and_honours_the_pins(bundle, tmp_path):
    repo = tmp_path / "repository"
    pins = tmp_path / "pins.txt"
    pins.write_text(f"names {add_version(repo, bundle, 1)}  # the first version\n")
    s = Server(
        "--model-repository", repo, "--model-control-mode", "explicit", "--repository-pins", pins, "--grpc-port", "0"
    )
    try:
        second = add_version(repo, bundle, 2, created_at="2026-01-02T00:00:00Z")
        index = json.loads(request(s, "POST", "/v2/repository/index")[2])
        assert [(r["version"], r["state"]) for r in index] == [("1", "READY"), ("2", "UNAVAILABLE")]
        assert infer(s)[1]["model_version"] == "1"  # nothing polls: version 2 waits for a load
        status, _, answer = request(s, "POST", "/v2/repository/models/names/load")
        assert status == 400 and f"bundle digest {second} is not pinned for model 'names'" in answer.decode()
        assert infer(s)[1]["model_version"] == "1"
        with open(pins, "a") as f:  # the pins are read again at every load: no restart to pin a new version
            f.write(f"names {second}\n")
        assert request(s, "POST", "/v2/repository/models/names/load")[0] == 200
        assert infer(s)[1]["model_version"] == "2"
        status, _, answer = request(s, "POST", "/v2/repository/models/nope/load")
        assert status == 404 and "no model 'nope' in the repository" in json.loads(answer)["error"]
        (repo / "empty" / "v1").mkdir(parents=True)  # a model folder with no version folder: a load that loads nothing
        status, _, answer = request(s, "POST", "/v2/repository/models/empty/load")
        assert status == 400 and "model empty: no version to serve" in json.loads(answer)["error"]
        override = b'{"parameters": {"config": "{}", "file:1/model.onnx": "AAAA"}}'  # Triton's: refused, not ignored
        status, _, answer = request(s, "POST", "/v2/repository/models/names/load", override)
        assert status == 400 and "load parameters ['config', 'file:1/model.onnx'] are not supported" in answer.decode()

        client = triton.InferenceServerClient(s.grpc)
        client.unload_model("names")
        until("names to be unloaded", lambda: not client.is_model_ready("names"))
        assert infer(s)[0] == 404
        states = {(m.version, m.state) for m in client.get_model_repository_index().models}
        assert states == {("1", "UNAVAILABLE"), ("2", "UNAVAILABLE")}
        with pytest.raises(triton.InferenceServerException) as e:
            client.infer("names", [triton.InferInput("text", [1], "BYTES")])
        assert e.value.status() == str(grpc.StatusCode.NOT_FOUND)
        client.load_model("names")
        assert client.is_model_ready("names") and client.is_model_ready("names", "1")
        assert infer(s)[1]["model_version"] == "2"
    finally:
        code, err = s.stop()
    assert code == 0, err


def test_a_version_that_fails_its_checks_at_start_up_stops_the_start_naming_it(bundle, tmp_path):
    repo = tmp_path / "repository"
    add_version(repo, bundle, 1)
    pins = tmp_path / "pins.txt"
    pins.write_text("names " + "0" * 64 + "\n")
    p = subprocess.run(
        [*PIPELINE, "serve", "--model-repository", repo, "--repository-pins", pins, "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "model names version 1:" in p.stderr and "is not pinned" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
