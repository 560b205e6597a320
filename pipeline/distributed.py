"""Data-parallel training on several processes or machines: PyTorch's DistributedDataParallel, launched by
`torchrun` (gloo on CPU, nccl on CUDA).

    torchrun --standalone --nproc-per-node 2 -m seqship.pipeline.cli run all --dataset names   # one machine, 2 processes
    torchrun --nnodes 2 --node-rank R --nproc-per-node 1 \\
             --rdzv-backend c10d --rdzv-endpoint HEAD:29500 -m seqship.pipeline.cli run all ...   # two machines

Rank 0 is the run: it runs the data stage, decides whether training must run (an unchanged stage is
reused), and sends the splits (and its training config) to the other ranks, so every rank trains on the
same seeded split. Each global batch of `--batch-size` rows, in the order a single process would take
them, is shared out across the ranks; the loss is scaled so that the averaged gradient is the global
batch's, as one process would compute it. Validation runs on rank 0, and its numbers are broadcast, so
early stopping and the learning-rate schedule decide the same on every rank. Only rank 0 writes (the
stage outputs, the bundle, the report); the other ranks exit when training ends.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

from seqship.runtime.errors import SeqshipError

log = logging.getLogger(__name__)


class DistributedError(SeqshipError):
    """This process cannot join, or lost, the torchrun job it belongs to."""


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    value = os.environ.get("WORLD_SIZE", "1") or "1"
    if not value.strip().isdigit():
        raise DistributedError(
            f"WORLD_SIZE={value!r} is not a number of processes: launch with torchrun, or unset WORLD_SIZE"
        )
    return int(value) > 1


def init_from_env(device: str | None = "cpu") -> bool:
    """Join the process group torchrun describes (env://); True when there is one. gloo on CPU, nccl when
    training on CUDA (device "cuda", or "auto" with a GPU)."""
    if not launched():
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
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
    try:
        # Rank 0 runs the data stage (and may be slow to read a large dataset) before the others hear from it.
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
    except (ValueError, RuntimeError) as e:
        raise DistributedError(
            f"cannot join the torchrun process group ({str(e).splitlines()[0][:200]}): launch with "
            "torchrun, or unset WORLD_SIZE"
        ) from None
    log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def dispatch_rank(device: str | None = "cpu", threads: int | None = None) -> bool:
    """Under torchrun: join the process group (left again at exit). Rank 0 goes on as the run (False); any
    other rank trains its share of each batch with rank 0's splits and config, then is done (True). Outside
    torchrun: False, and nothing is joined."""
    import atexit

    if not launched():
        return False
    init_from_env(device or "cpu")
    atexit.register(shutdown)
    rank, size = world()
    if rank == 0:
        log.info("training on %d processes (this one, rank 0, writes the run)", size)
        return False
    from seqship.pipeline.stages import follow_training

    logging.getLogger("seqship").setLevel(logging.WARNING)  # rank 0 reports; the others say only what goes wrong
    follow_training(threads)
    return True


def describe_failure(e: BaseException) -> str | None:
    """For an error that a collective raised because another rank of the job failed or vanished: a line
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
        return (
            f"rank {rank}: another process of this torchrun job failed or was stopped ({text.splitlines()[0][:160]}); "
            "the first failure is in torchrun's report and that rank's own error above"
        )
    return None


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


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over all ranks."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def shutdown() -> None:
    """Leave the process group (every rank, at the end of the command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
