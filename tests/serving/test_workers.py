"""`pipeline serve --workers N`, and the batcher's path for a lone request: real processes, sockets and signals."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from seqship.runtime import Predictor
from tests.serving.load import KeepAliveClients
from tests.serving.test_serve import OK, Server, infer_body, request


@pytest.fixture(scope="module")
def bundle(tiny_run) -> str:
    return tiny_run[1]["bundle"]


@pytest.fixture(scope="module")
def local(bundle) -> Predictor:
    return Predictor.load(bundle, providers="cpu")


def _value(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}{{{re.escape(want)}}} (\S+)$" if labels else rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _workers(server: Server) -> list[int]:
    pid = server.proc.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
def test_two_workers_share_the_port_sum_their_metrics_and_drain_every_accepted_request(bundle):
    """Two worker processes on one port: /metrics, whichever worker answers it, counts every worker's requests and
    batches; under 16 keep-alive clients, SIGTERM to the parent drains both: every accepted request is answered
    (the parent's tally, the clients' 200s), both workers served, and the exit is 0."""
    s = Server("--bundle", f"m={bundle}", "--workers", "2", "--threads", "1")
    assert len(_workers(s)) == 2
    load = KeepAliveClients(s, infer_body(["Nguyen", "Schmidt", "Rossi"]))
    answered = load.wait_for(300)  # answered before the scrapes began: every scrape counts at least these
    scrapes = [request(s, "GET", "/metrics")[2].decode() for _ in range(6)]  # fresh connections: either worker
    for text in scrapes:
        count = _value(text, "seqship_batch_texts_count", model="m")
        assert _value(text, "seqship_requests_total", code="200", endpoint="infer") >= answered, text
        assert _value(text, "seqship_batch_texts_sum", model="m") >= 3 * answered
        assert _value(text, "seqship_batch_texts_sum", model="m") > 3 * count  # 16 clients: batches of several
        assert "process_cpu_seconds_total" not in text  # one worker's: left out
    load.terminating()
    code, err = s.stop(signal.SIGTERM)
    load.stop()
    assert code == 0, err
    m = re.search(r"stopped: (\d+) requests accepted, (\d+) answered .*; by worker: (\d+), (\d+) accepted", err)
    assert m and m.group(1) == m.group(2), err
    assert int(m.group(3)) > 0 and int(m.group(4)) > 0, err  # both workers served
    assert load.failures == [] and load.ok + 6 == int(m.group(2)), (load.ok, load.failures, err)  # the 6 scrapes


def test_workers_serve_grpc_on_one_port_and_one_that_dies_is_reported_the_other_drains_exit_1(bundle, local):
    """--grpc-port 0 with two workers: one port, which either worker answers. A worker killed while serving is
    reported by name and pid; the other drains; the exit code is 1 (what the dead one had accepted is lost)."""
    import numpy as np
    import tritonclient.grpc as triton

    s = Server("--bundle", f"m={bundle}", "--workers", "2", "--grpc-port", "0")
    first, second = _workers(s)
    assert request(s, "POST", "/v2/models/m/infer", OK)[0] == 200
    for _ in range(4):  # a fresh channel each time: either worker
        client = triton.InferenceServerClient(s.grpc)
        text = triton.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"Nguyen"], dtype=object))
        got = client.infer("m", [text]).as_numpy("label")
        assert [b.decode() for b in got] == [local.predict(["Nguyen"])[0].label]
        client.close()
    os.kill(second, signal.SIGKILL)
    code = s.proc.wait(timeout=90)
    s.reader.join(timeout=30)
    err = "".join(s.err)
    assert code == 1 and "Traceback" not in err, err
    assert f"worker 2 (pid {second}) died while serving (killed by SIGKILL)" in err and "draining the others" in err
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)  # drained and gone too


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_a_parent_killed_outright_leaves_its_metrics_folder_to_the_next_server_to_remove(bundle):
    """SIGKILL to the parent: its workers drain themselves and exit, and the metrics folder nothing could remove is
    removed when the next --workers server makes its own; seqship's only, and only when no process uses it."""
    from seqship.runtime.serve import workers

    s = Server("--bundle", f"m={bundle}", "--workers", "2")
    pids = _workers(s)
    environ = Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
    folder = Path(next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1].decode())
    s.proc.kill()
    s.proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while any(map(_running, pids)):
        assert time.monotonic() < deadline, "the workers did not drain and exit without their parent"
        time.sleep(0.05)
    assert (folder / workers.OWNER).read_text() == str(s.proc.pid)
    foreign = Path(tempfile.mkdtemp(prefix=workers.METRICS_PREFIX, dir=folder.parent))  # not marked: not ours
    live = Path(tempfile.mkdtemp(prefix=workers.METRICS_PREFIX, dir=folder.parent))
    (live / workers.OWNER).write_text(str(os.getpid()))  # its owner runs
    # a server in another pid namespace (docker --ipc=host): its pid looks dead from here, but it holds the lock
    elsewhere, elsewhere_lock = workers._metrics_folder()
    Path(elsewhere, workers.OWNER).write_text(str(s.proc.pid))  # a pid that is gone here
    fifo = Path(tempfile.mkdtemp(prefix=workers.METRICS_PREFIX, dir=folder.parent))
    os.mkfifo(fifo / workers.OWNER)  # opened without O_NONBLOCK, this waited for a writer for ever
    fresh, fresh_lock = workers._metrics_folder()  # as the next server starts
    try:
        assert not folder.exists() and foreign.is_dir() and live.is_dir() and Path(fresh).is_dir()
        assert Path(elsewhere).is_dir() and fifo.is_dir()
        os.close(elsewhere_lock)  # that server ends too, killed: now its folder is stale
        assert workers.remove_stale_metrics(str(folder.parent)) == [elsewhere]
    finally:
        os.close(fresh_lock)
        for path in (foreign, live, fresh, fifo):
            shutil.rmtree(path)


# ---------------------------------------------------------------------------------------- the batcher, in-process


def _batcher(local, **limits):
    from seqship.runtime.serve.batching import Batcher
    from seqship.runtime.serve.metrics import Metrics
    from seqship.runtime.serve.protocol import Limits, Served

    metrics = Metrics()
    return Batcher(Served("names", Path("."), local), Limits(**limits), metrics), metrics


def test_a_lone_request_goes_at_once_and_the_32_that_follow_it_share_one_batch(local):
    """An idle batcher hands a lone request to a worker thread at once; 32 more arriving while it is scored wait
    and are scored together (not one by one), each with its own answer."""
    batcher, metrics = _batcher(local, threads=1)
    names = ["Nguyen", "Schmidt", "Rossi", "Kowalski"] * 8

    async def main():
        batcher.start()
        got = await asyncio.gather(batcher.submit(["Tanaka"], 1), *[batcher.submit([t], 2) for t in names])
        await batcher.close(5)
        return got

    got = asyncio.run(asyncio.wait_for(main(), 60))
    sample = metrics.registry.get_sample_value
    assert sample("seqship_batch_texts_count", {"model": "names"}) == 2
    assert sample("seqship_batch_texts_sum", {"model": "names"}) == 33
    assert got[0][0].label == local.predict(["Tanaka"])[0].label
    assert [[lab for lab, _ in p.top_k] for [p] in got[1:]] == [
        [lab for lab, _ in p.top_k] for p in local.predict(names, top_k=2)
    ]


def test_a_lone_request_whose_scoring_outlasts_the_timeout_gets_503_and_its_late_result_is_dropped(local):
    """The idle batcher's lone request is already on a worker thread when --timeout-s runs out (the thread is held
    by another job): the caller gets the 503 then, and the result that comes later answers no one."""
    from seqship.runtime.serve.protocol import HTTPError

    batcher, metrics = _batcher(local, threads=1, timeout_s=0.2)
    release = threading.Event()

    async def main():
        batcher.start()
        batcher.executor.submit(release.wait, 30)  # the one worker thread is busy for as long as the test says
        started = time.monotonic()
        try:
            await batcher.submit(["Nguyen"], 1)
        except HTTPError as e:
            answer = e
        waited = time.monotonic() - started
        release.set()
        await batcher.close(5)
        return answer, waited

    answer, waited = asyncio.run(asyncio.wait_for(main(), 60))
    assert answer.status == 503 and "not scored within 0.2 s" in answer.message and answer.headers["Retry-After"]
    assert waited < 30  # the timeout answered, not the thread's release
    assert metrics.registry.get_sample_value("seqship_batch_texts_count", {"model": "names"}) == 1  # scored, dropped
    assert batcher.idle()


class Watched:
    """The real Predictor, recording the thread each batch is scored on, and slower by `delay_s` (a larger model)."""

    def __init__(self, predictor: Predictor, delay_s: float = 0.0):
        self.predictor, self.delay_s, self.threads = predictor, delay_s, []

    def predict(self, texts, **options):
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay_s)
        return self.predictor.predict(texts, **options)


@pytest.mark.parametrize("delay_s, inline", [(0.0, True), (0.002, False)])
def test_a_lone_one_text_request_is_scored_on_the_event_loop_only_for_a_cheap_model(local, delay_s, inline):
    """Once a one-text batch has been measured under 1 ms, a lone one-text request is scored on the event loop
    (no hand-off to a thread); a request with company or with several texts still goes to a worker thread, and
    a model slower than 1 ms a text never holds the event loop. Answers are the same either way."""
    from seqship.runtime.serve.batching import Batcher
    from seqship.runtime.serve.metrics import Metrics
    from seqship.runtime.serve.protocol import Limits, Served

    local.predict(["Kim"])  # warm: a fresh session's first run is slower than the rest
    model = Watched(local, delay_s)
    batcher = Batcher(Served("names", Path("."), model), Limits(threads=1), Metrics())

    async def main():
        batcher.start()
        got = [await batcher.submit(["Nguyen"], 2, alone=True) for _ in range(4)]
        got.append(await batcher.submit(["Nguyen", "Kim"], 2, alone=True))
        got.append(await batcher.submit(["Nguyen"], 2, alone=False))
        # a text cheap to send but long to walk (8 MB of spaces took 0.3 s to tokenize on the loop): on a thread
        got.append(await batcher.submit([" " * 100_000 + "Nguyen"], 2, alone=True))
        await batcher.close(5)
        return got

    got = asyncio.run(asyncio.wait_for(main(), 60))
    on_loop = [name == threading.main_thread().name for name in model.threads]
    assert on_loop == [False, inline, inline, inline, False, False, False]  # the first: not measured yet
    want = local.predict(["Nguyen", "Kim"], top_k=2)
    assert all(g[0].top_k == want[0].top_k for g in got) and got[4][1].top_k == want[1].top_k


def test_under_load_one_text_requests_are_still_batched_not_scored_one_by_one_inline(bundle):
    """Sixteen keep-alive clients of one text each: the requests uvicorn has read but not started count as in
    flight, so none is scored inline as if alone (the first to run in each turn of the loop would be, and then
    the next: every text scored on the event loop, one at a time): they are batched."""
    s = Server("--bundle", f"m={bundle}", "--threads", "1")
    load = KeepAliveClients(s, infer_body(["Nguyen"]))
    load.wait_for(400)
    text = request(s, "GET", "/metrics")[2].decode()
    load.stop()
    batches, texts = (_value(text, f"seqship_batch_texts_{k}", model="m") for k in ("count", "sum"))
    assert texts >= 400 and texts > 2 * batches, text  # batches of several texts on average
    code, err = s.stop()
    assert code == 0 and load.failures == [], (err, load.failures)
