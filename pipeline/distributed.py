"""Data-parallel training on several processes or machines: PyTorch's DistributedDataParallel, launched by
`torchrun` (gloo on CPU, nccl on CUDA).

    torchrun --standalone --nproc-per-node 2 -m seqship.pipeline.cli run all --dataset names   # one machine, 2 processes
    torchrun --nnodes 2 --node-rank R --nproc-per-node 1 \\
             --rdzv-backend c10d --rdzv-endpoint HEAD:29500 -m seqship.pipeline.cli run all ...   # two machines

Rank 0 is the run: it runs the data stage, decides whether training must run (an unchanged stage is
reused), and sends its training config and the data stage's folder to the other ranks. Every rank, rank 0
included, then reads only its shard of the training split from the data stage's files (rows i with
i % world == rank: no rank holds rows for another, and no row crosses the process group). What needs the
whole split comes from the shards without their rows: token counts, summed on rank 0 (the vocabulary), an
integer per row, gathered (its token count: max_length and the batch order), label counts, summed (the
class weights); rank 0 sends the tokenizer and the model's config. The wide part (--wide), fitted on the
whole split, is fitted by a child process of rank 0 that reads the split's file and writes the fitted
arrays (.npz) and choices (JSON), so its memory goes back to the OS. Each global batch of `--batch-size`
rows, in the order a single process would take them, is shared out by shard (each rank takes the rows of
its own shard; one with none of a batch's rows joins the step with a zero gradient); the loss is scaled so
that the averaged gradient is the global batch's, as one process would compute it. Every rank checks the
split file it streams against the data stage's recorded sha256, which rank 0 sends. Validation runs on rank 0 (which keeps the validation and test splits), and its numbers
are broadcast, so early stopping and the learning-rate schedule decide the same on every rank. Only rank 0
writes (the stage outputs, the bundle, the report; metrics.json's "ranks" records the rows each rank
held and its peak memory); the other ranks exit when training ends.

Nothing waits in silence: before joining, each rank says where it joins, as which rank, and which
environment variables sent it there (a scheduler may set WORLD_SIZE and friends in every container,
torchrun or not); joining takes at most `--rendezvous-timeout` seconds (env SEQSHIP_RENDEZVOUS_TIMEOUT,
default 120), then it is a one-line error. Under torchrun, a rank's `Error: ...` line is also written to
torchrun's error file, so torchrun's failure report shows it instead of a pointer to its docs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from seqship.runtime.errors import SeqshipError

log = logging.getLogger(__name__)

RENDEZVOUS_ENV = "SEQSHIP_RENDEZVOUS_TIMEOUT"
RENDEZVOUS_TIMEOUT_S = 120.0  # torchrun starts every rank at once; a scheduler's containers may start apart
# Once joined, a rank may wait long for another: rank 0 runs the data stage (a large dataset is slow to
# read) while the others wait for its word to read their shards.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(SeqshipError):
    """This process cannot join, or lost, the torchrun job it belongs to."""


class PeerFailed(DistributedError):
    """A collective failed because another rank of the job failed or vanished: a consequence, not the cause."""


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    value = os.environ.get("WORLD_SIZE", "1") or "1"
    if not (value.strip().isascii() and value.strip().isdigit()):
        raise DistributedError(
            f"WORLD_SIZE={value!r} is not a number of processes: launch with torchrun, or unset WORLD_SIZE"
        )
    return int(value) > 1


def under_torchrun() -> bool:
    """Whether torchrun (torch.distributed.elastic) started this process: it sets TORCHELASTIC_RUN_ID."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID"))


def _launch_env() -> str:
    """The variables that make this a rank of a job, as `NAME=value` (what to unset to run alone)."""
    return ", ".join(f"{k}={os.environ[k]}" for k in LAUNCH_VARS if k in os.environ)


def rendezvous_seconds(given: float | None) -> float:
    """How long joining may take: `given` (--rendezvous-timeout, which click also reads from
    SEQSHIP_RENDEZVOUS_TIMEOUT), else 120 s."""
    seconds = RENDEZVOUS_TIMEOUT_S if given is None else given
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
        raise DistributedError(
            f"--rendezvous-timeout ({RENDEZVOUS_ENV}) must be a number of seconds above 0, got {seconds!r}"
        )
    return float(seconds)


def init_from_env(device: str | None = "cpu", rendezvous_timeout: float | None = None) -> bool:
    """Join the process group torchrun describes (env://); True when there is one. gloo on CPU, nccl when
    training on CUDA (device "cuda", or "auto" with a GPU). Joining waits at most `rendezvous_timeout`
    seconds (default 120) for every rank, and says first what it waits for."""
    if not launched():
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    seconds = rendezvous_seconds(rendezvous_timeout)
    size = int(os.environ["WORLD_SIZE"])
    origin = "torchrun" if under_torchrun() else "the environment, not torchrun"
    missing = [k for k in LAUNCH_VARS if not os.environ.get(k)]
    if missing:
        raise DistributedError(
            f"cannot join a process group: {_launch_env()} is set ({origin}) but not {', '.join(missing)}; "
            f"launch with torchrun (`torchrun --nproc-per-node {size} -m seqship.pipeline.cli run all ...`), "
            "or unset WORLD_SIZE to run in one process"
        )
    for name, limit in (("RANK", size), ("MASTER_PORT", 65536)):
        value = os.environ[name].strip()
        if not (value.isascii() and value.isdigit()) or int(value) >= limit:
            raise DistributedError(
                f"{name}={os.environ[name]!r} is not a {'rank below WORLD_SIZE' if name == 'RANK' else 'port number'} "
                f"({_launch_env()}, set by {origin}): launch with torchrun, or unset WORLD_SIZE to run in one process"
            )
    rank, where = os.environ["RANK"].strip(), f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT'].strip()}"
    cuda = device in ("cuda", "auto") and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {local} has no GPU of its own (this machine has {torch.cuda.device_count()}): "
                "pass --nproc-per-node at most the GPU count, or --device cpu"
            )
        torch.cuda.set_device(local)
    # torchrun's ranks start together, so this is routine there; anywhere else a stray WORLD_SIZE may be why
    # the command waits at all, so it is a warning, shown even with -q
    (log.info if under_torchrun() else log.warning)(
        "distributed: joining the process group at %s as rank %s of %d (%s, set by %s); waiting up to %g s "
        "for all %d processes (--rendezvous-timeout or %s waits longer; unset WORLD_SIZE to run in one process)",
        where,
        rank,
        size,
        _launch_env(),
        origin,
        seconds,
        size,
        RENDEZVOUS_ENV,
    )
    joining = timedelta(seconds=seconds)
    set_pg_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
    try:
        with NativeStderrAside() as native:
            # The store (TCPStore: rank 0 or torchrun's agent hosts it) bounds connecting and waiting for the
            # others; the group's own timeout bounds its first exchange, and is raised once everyone is in.
            store, rank_, size_ = next(dist.rendezvous("env://", timeout=joining))
            dist.init_process_group(
                backend,
                store=dist.PrefixStore("default_pg", store),  # as init_process_group prefixes a store it makes
                rank=rank_,
                world_size=size_,
                timeout=joining if set_pg_timeout else COLLECTIVE_TIMEOUT,
            )
    except (ValueError, RuntimeError) as e:
        log.debug("torch's own log while joining:\n%s", native.text)
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        fix = (
            "another rank of this torchrun job did not start or stopped before joining (see torchrun's report)"
            if under_torchrun()
            else f"{_launch_env()} come from {origin}: start every rank of the job (torchrun does), or unset "
            "WORLD_SIZE to run in one process"
        )
        raise DistributedError(
            f"rank {rank} of {size}: the process group at {where} was not joined within {seconds:g} s "
            f"({detail}). {fix}; --rendezvous-timeout (env {RENDEZVOUS_ENV}) waits longer"
        ) from None
    if native.text:
        sys.stderr.write(native.text)  # joined after all: what torch logged meanwhile is shown as it would have been
    store.set_timeout(COLLECTIVE_TIMEOUT)
    if set_pg_timeout:
        set_pg_timeout(COLLECTIVE_TIMEOUT)
    log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


class NativeStderrAside:
    """Native code's writes to stderr (file descriptor 2) go to a temporary file while inside; `.text` has
    them afterwards. torch's C++ store logs each failed connection attempt with dozens of stack frames,
    which would bury the one line that says what is wrong."""

    def __enter__(self):
        import tempfile

        self.text = ""
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read(1 << 20).decode("utf-8", "replace")
        self._file.close()


def dispatch_rank(
    device: str | None = "cpu", threads: int | None = None, rendezvous_timeout: float | None = None
) -> bool:
    """Under torchrun: join the process group (left again at exit). Rank 0 goes on as the run (False); any
    other rank trains its share of each batch, from its own shard with rank 0's config, then is done (True).
    Outside torchrun: False, and nothing is joined."""
    import atexit

    if not launched():
        return False
    init_from_env(device or "cpu", rendezvous_timeout)
    atexit.register(shutdown)
    rank, size = world()
    if rank == 0:
        log.info("training on %d processes (this one, rank 0, writes the run)", size)
        return False
    from seqship.pipeline.stages import follow_training

    logging.getLogger("seqship").setLevel(logging.WARNING)  # rank 0 reports; the others say only what goes wrong
    if not follow_training(threads):
        log.warning(
            "rank %d: nothing was trained on %d processes: rank 0 reused the run's train stage (its data and "
            "options are unchanged); pass --force, or another --run-name, to train data-parallel",
            rank,
            size,
        )
    return True


def describe_failure(e: BaseException) -> PeerFailed | None:
    """For an error that a collective raised because another rank of the job failed or vanished: an error
    that says so (torchrun's report names the rank that failed first); else None."""
    try:
        if not launched() or not isinstance(e, RuntimeError):
            return None
    except DistributedError:
        return None
    text = str(e)
    if type(e).__module__.startswith("torch.distributed") or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL", "Broken pipe")
    ):
        rank = os.environ.get("RANK", "?")
        return PeerFailed(
            f"rank {rank}: another process of this torchrun job failed or was stopped ({text.splitlines()[0][:160]}); "
            "the first failure is in torchrun's report and that rank's own error above"
        )
    return None


def record_error(error: BaseException) -> None:
    """Under torchrun: put this rank's one-line error where torchrun's failure report shows it (the file
    named by TORCHELASTIC_ERROR_FILE, in the format torch's own @record writes), so that the report names
    seqship's error rather than pointing at PyTorch's docs. Elsewhere, nothing."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    from seqship.runtime.fsio import write_json_atomic

    line = f"Error: {error}"
    # torchrun names as root cause the failure with the earliest whole-second timestamp; a rank that failed
    # only because another did counts one second later, so that a tie goes to the rank that failed first
    stamp = int(time.time()) + (1 if isinstance(error, PeerFailed) else 0)
    try:
        write_json_atomic(
            path, {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(stamp)}}}
        )
    except OSError as e:  # the error itself is already on stderr; the report then points at PyTorch's docs
        log.debug("torchrun's error file %s was not written: %s", path, e)


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside a process group."""
    try:
        import torch.distributed as dist
    except ModuleNotFoundError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast(obj=None, src: int = 0):
    """Rank src's object, on every rank (the others pass None)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def read_shard(data_dir: Path, split: str, sha256: str | None = None) -> list[tuple[str, str]]:
    """This rank's shard of a split the data stage wrote: its rows i with i % world == rank, read from the
    file as a stream (the other rows are passed over, never kept). The ranks share a file system with rank 0
    (one machine; several: the run folder on shared storage). The whole file is hashed as it is read: when
    it is not the one the data stage recorded (`sha256`: a stale copy on another machine's mount), or has
    fewer rows than the job has ranks (a rank would have none), that is an error, the same on every rank."""
    import hashlib

    from seqship.pipeline.runs import SPLIT_SUFFIX

    rank, size = world()
    path = Path(data_dir) / f"{split}{SPLIT_SUFFIX}"
    rows, digest, n = [], hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                digest.update(line)
                if (n - 1) % size == rank:
                    row = json.loads(line.decode("utf-8"))
                    rows.append((row["text"], row["label"]))
    except OSError as e:
        raise DistributedError(
            f"rank {rank}: cannot read its shard of {path} ({e.strerror or e}): every rank reads the data "
            "stage's files, so put --artifacts-dir on storage every machine mounts at the same path"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise DistributedError(f"rank {rank}: {path}: not a split the data stage wrote ({e}); rerun it") from None
    if sha256 is not None and digest.hexdigest() != sha256:
        raise DistributedError(
            f"rank {rank}: {path} is not the file the data stage wrote: its sha256 is {digest.hexdigest()}, the "
            f"data stage recorded {sha256} (a stale or partial copy on this machine's mount?): give every rank the "
            "same run folder (shared storage, or an up-to-date copy)"
        )
    if 1 < size and n < size:
        raise DistributedError(
            f"the {split} split ({path}) has {n} rows, fewer than the {size} ranks of this job, so a rank would "
            f"train on none: run on at most {n} processes (torchrun --nproc-per-node/--nnodes), or give more data"
        )
    log.info("rank %d: %d rows of %s, its shard (every %dth row)", rank, len(rows), path.name, size)
    return rows


def _collective_device():
    """Where collectives' tensors live: the rank's GPU under nccl, else the CPU (gloo)."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over all ranks."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def gather_rows(values):
    """Every rank's per-row integers (numpy, one per row of its shard, as read_shard reads it) -> the whole
    split's, in row order (row i from rank i % world), on every rank: an integer per row crosses the
    process group, never a row. Outside a process group, `values` itself."""
    import numpy as np
    import torch
    import torch.distributed as dist

    rank, size = world()
    values = np.asarray(values, dtype=np.int64)
    if size == 1:
        return values
    device = _collective_device()
    counts = torch.zeros(size, dtype=torch.int64, device=device)
    counts[rank] = len(values)
    dist.all_reduce(counts)
    counts = counts.tolist()
    mine = torch.zeros(max(counts), dtype=torch.int64, device=device)
    mine[: len(values)] = torch.from_numpy(values).to(device)
    parts = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(parts, mine)
    out = np.empty(sum(counts), dtype=np.int64)
    for r, (part, n) in enumerate(zip(parts, counts)):
        if len(out[r::size]) != n:
            raise DistributedError(
                f"rank {r} holds {n} rows of a split of {len(out)}, not its shard's {len(out[r::size])}: the ranks "
                "read different files (is the run folder the same on every machine?)"
            )
        out[r::size] = part[:n].cpu().numpy()
    return out


def sum_on_root(counts: Counter) -> Counter | None:
    """Rank 0: the sum of every rank's counts (token counts of its shard: as many entries as distinct tokens,
    not rows); the other ranks: None. Outside a process group, `counts` itself."""
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return counts
    parts = [None] * size if rank == 0 else None
    dist.gather_object(counts, parts, dst=0)
    if rank != 0:
        return None
    total = Counter()
    for part in parts:
        total.update(part)
    return total


def exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """In a child process of a rank (the wide part's fit): end this process when `parent` is no longer its
    parent (torchrun killed the rank), rather than computing on for nobody."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def shutdown() -> None:
    """Leave the process group (every rank, at the end of the command)."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # DDP's reducer holds gloo's last work objects; freed here rather than at interpreter teardown (a
        # rank that ended before rank 0 was seen, rarely, to abort at exit: "terminate called without an
        # active exception")
        gc.collect()
        dist.destroy_process_group()
