"""The train stage: tokenizer from the training split, seeded training, early stopping, test metrics."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from seqship.pipeline.distributed import COLLECTIVE_TIMEOUT, all_sum, exit_with_parent, gather_rows, sum_on_root
from seqship.pipeline.distributed import broadcast as dist_broadcast
from seqship.pipeline.distributed import world as dist_world
from seqship.pipeline.metrics import classification_metrics
from seqship.pipeline.model import (
    CELLS,
    MAX_PAIR_BUCKETS,
    MAX_WIDE_BUCKETS,
    MAX_WIDE_NGRAMS,
    POOLINGS,
    ModelConfig,
    TextClassifier,
    without_neutral,
)

# train/'s file names (the run folder's layout is defined once, in pipeline.runs)
from seqship.pipeline.runs import HISTORY, LABELS, METRICS, MODEL_CONFIG, SPLIT_SUFFIX, TOKENIZER, WEIGHTS
from seqship.runtime.errors import SeqshipError
from seqship.runtime.tokenizer import (
    MAX_LENGTH,
    UNICODE_VERSION,
    Tokenizer,
    TokenizerSpec,
    normalize,
    pad_batch,
    split_tokens,
    unassigned_ranges,
    vocab_from_counts,
)
from seqship.runtime.tokenizer import TYPES as TOKENIZER_KINDS

log = logging.getLogger(__name__)

CLASS_WEIGHTS = ("none", "balanced", "sqrt")  # TrainConfig.class_weight
LR_SCHEDULES = ("plateau", "cosine")  # TrainConfig.lr_schedule
MAX_PAIR_WEIGHTS = 2**26  # pair table entries (float32: 256 MiB); the ONNX file must stay under protobuf's 2 GiB
# The version of what training computes from the same data and config: one of the train (and cv) stage's
# inputs, so that a run trained by earlier code is trained again. Bump it with any change here or in
# pipeline/model.py that changes the weights or metrics trained from the same data, config and seed (the
# model, the loss, the optimiser or its schedule, the vocabulary, batching, early stopping, the metrics).
TRAIN_VERSION = 1

Progress = Callable[[str, dict], None]  # (event, fields): "epoch_start", "step", "epoch_end"


class TrainError(SeqshipError):
    """Training cannot start or its saved outputs cannot be read."""


@dataclass(frozen=True)
class TrainConfig:
    """Training, tokenizer and model-size choices; part of the train stage's inputs."""

    epochs: int = 30  # upper bound; early stopping usually ends sooner
    batch_size: int = 64
    lr: float = 3e-3  # AdamW learning rate
    weight_decay: float = 1e-4
    clip_norm: float = 1.0  # gradient norm clipping
    patience: int = 5  # epochs without a better validation macro-F1 before stopping
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    tokenizer: str = "char"  # "char" or "word"
    lowercase: bool = False
    max_length: int | None = None  # None: the 99.9th percentile of training lengths, rounded up to 8
    min_freq: int = 1  # tokens seen fewer times in training map to unk
    max_vocab: int | None = None  # keep at most this many entries (pad and unk included), most frequent first
    cell: str = "gru"
    embed_dim: int = 64
    hidden_dim: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.1
    embed_dropout: float = 0.0
    pooling: str = "last"  # "last", "max" or "last+max"
    # Loss weight per class, from the training split's counts: "none"; "balanced" (n / (k * n_c): every class
    # weighs the same in total); "sqrt" (in between: 1 / sqrt(n_c)). Weights are scaled to average 1 per
    # training text, so the learning rate means the same. For skewed classes, where macro-F1 (the
    # validation metric that picks the checkpoint) otherwise ignores the small ones.
    class_weight: str = "none"
    # Learning rate over training: "plateau" (halved when validation macro-F1 stalls for patience // 2
    # epochs); "cosine" (linear warm-up over the first epoch, or its first tenth when --epochs is 1,
    # then cosine decay to 0 at the --epochs bound, per step; early stopping still applies, so set
    # --epochs to the length you mean and --patience to at least that).
    lr_schedule: str = "plateau"
    pair_buckets: int = 0  # > 0: a hashed (token, next token) embedding from this many buckets (ModelConfig)
    # A wide part beside the recurrent one (model.WideLinear, fitted by pipeline.wide): TF-IDF of token 1..wide_ngrams
    # -grams (0: the baseline's range for this tokenizer) in wide_buckets hashed buckets, fitted first by logistic
    # regression; the recurrent head then starts at zero, so epoch 0 is the linear model. wide_tune: the wide
    # weights keep training with the rest (else frozen).
    wide: bool = False
    wide_ngrams: int = 0
    wide_buckets: int = 2**18
    wide_tune: bool = False

    def __post_init__(self) -> None:
        """Refuse impossible options with the option's name, before any data is read."""
        problems = []

        def need(ok: bool, option: str, rule: str) -> None:
            if not ok:
                problems.append(f"--{option} {rule}, got {getattr(self, option.replace('-', '_'))!r}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("epochs", "batch_size", "patience", "min_freq", "embed_dim", "hidden_dim", "num_layers"):
            need(
                is_int(getattr(self, name)) and getattr(self, name) >= 1,
                name.replace("_", "-"),
                "must be an integer >= 1",
            )
        need(is_num(self.lr) and 0 < self.lr <= 10, "lr", "must be a number > 0 and <= 10")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight-decay", "must be a number >= 0")
        need(is_num(self.clip_norm) and self.clip_norm > 0, "clip-norm", "must be a number > 0")
        need(
            is_int(self.pair_buckets) and 0 <= self.pair_buckets <= MAX_PAIR_BUCKETS,
            "pair-buckets",
            f"must be an integer from 0 (none) to {MAX_PAIR_BUCKETS}",
        )
        if (
            is_int(self.pair_buckets)
            and is_int(self.embed_dim)
            and self.pair_buckets * self.embed_dim > MAX_PAIR_WEIGHTS
        ):
            problems.append(
                f"--pair-buckets {self.pair_buckets} with --embed-dim {self.embed_dim} is a "
                f"{self.pair_buckets * self.embed_dim * 4 / 2**20:.0f} MiB pair table; at most "
                f"{MAX_PAIR_WEIGHTS * 4 // 2**20} MiB (fewer buckets or a smaller embedding)"
            )
        for name in ("dropout", "embed_dropout"):
            need(
                is_num(getattr(self, name)) and 0 <= getattr(self, name) < 1,
                name.replace("_", "-"),
                "must be in [0, 1)",
            )
        need(is_int(self.seed) and 0 <= self.seed < 2**32, "seed", "must be an integer from 0 to 2**32 - 1")
        need(
            is_int(self.wide_ngrams) and 0 <= self.wide_ngrams <= MAX_WIDE_NGRAMS,
            "wide-ngrams",
            f"must be an integer from 0 (the baseline's) to {MAX_WIDE_NGRAMS}",
        )
        need(
            is_int(self.wide_buckets)
            and 2 <= self.wide_buckets <= MAX_WIDE_BUCKETS
            and self.wide_buckets & (self.wide_buckets - 1) == 0,
            "wide-buckets",
            f"must be a power of two from 2 to {MAX_WIDE_BUCKETS}",
        )
        need(self.device in ("cpu", "cuda", "auto"), "device", "must be cpu, cuda or auto")
        need(self.tokenizer in TOKENIZER_KINDS, "tokenizer", f"must be one of {list(TOKENIZER_KINDS)}")
        need(self.cell in CELLS, "cell", f"must be one of {sorted(CELLS)}")
        need(self.pooling in POOLINGS, "pooling", f"must be one of {list(POOLINGS)}")
        need(self.class_weight in CLASS_WEIGHTS, "class-weight", f"must be one of {list(CLASS_WEIGHTS)}")
        need(self.lr_schedule in LR_SCHEDULES, "lr-schedule", f"must be one of {list(LR_SCHEDULES)}")
        need(
            isinstance(self.lowercase, bool) and isinstance(self.bidirectional, bool),
            "lowercase",
            "and --bidirectional must be true or false",
        )
        need(
            self.max_length is None or (is_int(self.max_length) and 1 <= self.max_length <= MAX_LENGTH),
            "max-length",
            f"must be an integer from 1 to {MAX_LENGTH}",
        )
        need(
            self.max_vocab is None or (is_int(self.max_vocab) and self.max_vocab >= 3),
            "max-vocab",
            "must be an integer >= 3 (pad and unk included)",
        )
        if problems:
            raise TrainError("invalid training options: " + "; ".join(problems))


def config_inputs(cfg: TrainConfig) -> dict:
    """The training options as a stage's inputs record them: upgrading seqship leaves earlier runs current."""
    return without_neutral(asdict(cfg))


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The "cosine" schedule's factor on the learning rate before optimiser step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    done = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * done))


def class_weights(y: np.ndarray, num_labels: int, kind: str) -> np.ndarray | None:
    """Per-class loss weights for training labels `y` (see TrainConfig.class_weight), or None for "none".

    Scaled so that the mean weight over the training texts is 1. A label with no training text gets
    weight 0 (nothing to weigh).
    """
    return weights_for_counts(np.bincount(y, minlength=num_labels), kind)


def weights_for_counts(counts: np.ndarray, kind: str) -> np.ndarray | None:
    """class_weights from the training texts' count per label (summed over shards, say)."""
    if kind == "none":
        return None
    counts = np.asarray(counts, dtype=np.float64)
    raw = np.zeros(len(counts))
    seen = counts > 0
    raw[seen] = 1.0 / (counts[seen] if kind == "balanced" else np.sqrt(counts[seen]))
    return raw * counts.sum() / float((raw * counts).sum())


def default_threads() -> int:
    """Training threads when --threads is not given: 1.

    Measured on 2 cores (pipeline/bench/README.md, "Training on a busy machine"): these models are small, so a second
    thread buys little when the machine is idle, and costs many times over when another process holds
    a core, because OpenMP's threads wait at every step for the one that is not running.
    """
    return 1


def resolve_device(name: str) -> torch.device:
    """The torch device for 'cpu', 'cuda' or 'auto' (CUDA when available), or a TrainError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: torch sees no CUDA GPU here; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise TrainError(f"--device must be cpu, cuda or auto, got {name!r}")
    return torch.device(name)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (VmHWM: getrusage's would count what the process
    it was exec'd from held), or 0 where /proc does not say."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), 0.0)
    except OSError:
        return 0.0


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit_tokenizer(texts: Sequence[str], cfg: TrainConfig) -> Tokenizer:
    """Vocabulary and max_length from the training texts only, through the runtime's own code."""
    return tokenizer_from_stats(*token_stats(texts, cfg), cfg)


def token_stats(texts: Sequence[str], cfg: TrainConfig) -> tuple[Counter, np.ndarray]:
    """What the tokenizer is fitted from: token counts, and each text's number of tokens (before truncation).
    Summed and gathered over shards, they are the whole split's (pipeline.distributed)."""
    base = TokenizerSpec(type=cfg.tokenizer, lowercase=cfg.lowercase)
    counts, lengths = Counter(), np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        tokens = split_tokens(normalize(text, base), base.type)
        counts.update(tokens)
        lengths[i] = len(tokens)
    return counts, lengths


def tokenizer_from_stats(counts: Counter, lengths: np.ndarray, cfg: TrainConfig) -> Tokenizer:
    """The tokenizer for a split's token counts and lengths (token_stats)."""
    max_length = cfg.max_length
    if max_length is None:
        p = float(np.percentile(lengths, 99.9))
        max_length = max(8, int(math.ceil(p / 8) * 8))
    vocab = vocab_from_counts(counts, min_freq=cfg.min_freq, max_size=cfg.max_vocab)
    if len(vocab) <= 2:  # pad and unk only: every text would be unk, and a model of it predicts one class
        raise TrainError(
            f"no {cfg.tokenizer} token of the training split occurs --min-freq {cfg.min_freq} times "
            f"(the most frequent occurs {max(counts.values(), default=0)} times): lower --min-freq"
            + ("" if cfg.tokenizer == "char" else ", or use --tokenizer char")
        )
    spec = TokenizerSpec(type=cfg.tokenizer, lowercase=cfg.lowercase, max_length=max_length, vocab=vocab)
    return Tokenizer(spec)


def encode_split(tokenizer: Tokenizer, rows: Sequence[tuple[str, str]], label_ids: dict[str, int]):
    """Token id lists and label ids of a split."""
    ids = [tokenizer.encode(text, i)[0] for i, (text, _) in enumerate(rows)]
    y = np.array([label_ids[label] for _, label in rows], dtype=np.int64)
    return ids, y


def batches(ids: list[list[int]], order: np.ndarray, batch_size: int, pad_id: int):
    """(row indices, padded token ids, lengths) per batch, in the given order."""
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        tok, lengths = pad_batch([ids[i] for i in idx], pad_id)
        yield idx, torch.from_numpy(tok), torch.from_numpy(lengths)


def bucketed_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffled, but batches hold similar lengths (less padding, faster epochs)."""
    perm = rng.permutation(len(lengths))
    chunk = batch_size * 50
    groups = []
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        groups.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(groups)
    return np.concatenate(groups) if groups else perm


@torch.inference_mode()
def predict_logits(
    model: nn.Module, ids: list[list[int]], pad_id: int, device: torch.device, batch_size: int = 512
) -> np.ndarray:
    """Logits for encoded texts, in input order (model in eval mode)."""
    model.eval()
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = None
    for idx, tok, lengths in batches(ids, order, batch_size, pad_id):
        logits = model(tok.to(device), lengths.to(device)).float().cpu().numpy()
        if out is None:
            out = np.empty((len(ids), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out


def train(
    train_rows: Sequence[tuple[str, str]],
    val_rows: Sequence[tuple[str, str]],
    test_rows: Sequence[tuple[str, str]],
    labels: Sequence[str],
    cfg: TrainConfig,
    out_dir: Path | None,
    progress: Progress | None = None,
    threads: int | None = None,
    split_dir: Path | None = None,
) -> dict:
    """Train, keep the best validation checkpoint, evaluate on test, and save everything to out_dir.

    threads: torch's intra-op threads (default: `default_threads()`); recorded in metrics.json.
    Under torchrun (pipeline.distributed), train_rows is this rank's shard of the training split, val_rows
    and test_rows are rank 0's alone, and split_dir is the data stage's folder (the wide part is fitted from it);
    the other ranks write nothing (out_dir None).
    """
    follower = dist_world()[0] != 0  # under torchrun, a rank other than 0: train_rows is its shard, and no more
    for name, rows in (("training", train_rows), ("validation", val_rows), ("test", test_rows)):
        if not rows and not (follower and name != "training"):
            raise TrainError(
                f"the {name} split has no texts: give more data (a few rows per label at least), "
                "or check the data stage's counts with `pipeline run data --json`"
            )
    threads = default_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise TrainError(f"--threads must be an integer >= 1, got {threads!r}")
    # Same seed, same weights: two processes trained different weights until deterministic algorithms
    # were required AND oneDNN (mkldnn) was switched off; its multi-threaded CPU kernels are not
    # bit-reproducible and torch does not flag them as nondeterministic. Both are restored afterwards.
    if "MKL_CBWR" not in os.environ:
        log.warning(
            "MKL_CBWR is not set: this training may not be bit-reproducible across processes "
            "(call seqship.pipeline.pin_blas_for_reproducibility() before importing torch; `pipeline run` does)"
        )
    was_deterministic, was_mkldnn = torch.are_deterministic_algorithms_enabled(), torch.backends.mkldnn.enabled
    was_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(threads)
    try:
        return _train(train_rows, val_rows, test_rows, labels, cfg, out_dir, progress, split_dir)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.mkldnn.enabled = was_mkldnn
        torch.set_num_threads(was_threads)


def _train(
    train_rows, val_rows, test_rows, labels, cfg: TrainConfig, out_dir: Path, progress: Progress | None, split_dir
) -> dict:
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if device.type == "cuda":  # under torchrun, this rank's GPU (pipeline.distributed set it)
        device = torch.device("cuda", torch.cuda.current_device())
    label_ids = {lab: i for i, lab in enumerate(labels)}
    rank, world = dist_world()
    # Under torchrun, every rank holds only its shard of the training split (rows i with i % world == rank,
    # read by pipeline.distributed.read_shard), rank 0 included; rank 0 also holds validation and test. What
    # needs the whole split comes from the shards without their rows: token counts (summed on rank 0: the
    # vocabulary), an integer per row (its token count: max_length and the batch order), label counts (the
    # class weights). Rank 0 sends the tokenizer and the model's config; the wide part is fitted apart.
    counts, raw_lengths = token_stats([t for t, _ in train_rows], cfg)
    counts, raw_lengths = sum_on_root(counts), gather_rows(raw_lengths)
    tokenizer = mcfg = fitted = None
    if rank == 0:
        tokenizer = tokenizer_from_stats(counts, raw_lengths, cfg)
        longest = int(raw_lengths.max())
        if cfg.wide and world > 1:  # the whole training split, in a child process (its memory goes back)
            fitted = _fit_wide_apart(split_dir, tokenizer, labels, cfg, out_dir)
        mcfg = model_config(
            cfg, tokenizer.vocab_size, len(labels), tokenizer.spec.pad_id, **_wide_options(cfg, train_rows, fitted)
        )
    del counts, raw_lengths
    if world > 1:
        tokenizer, mcfg = dist_broadcast((tokenizer, mcfg) if rank == 0 else None)
    pad = tokenizer.spec.pad_id
    x_train, y_train = encode_split(tokenizer, train_rows, label_ids)
    x_val, y_val = encode_split(tokenizer, val_rows, label_ids)
    x_test, y_test = encode_split(tokenizer, test_rows, label_ids)
    model = TextClassifier(mcfg).to(device)
    # the wide part is fitted on rank 0 only: DDP gives every rank rank 0's weights at construction
    wide = None
    if cfg.wide and rank == 0:
        wide = (
            _fit_wide(model, cfg, (x_train, y_train), (x_val, y_val), labels, pad)
            if fitted is None
            else _use_wide(model, cfg, fitted)
        )
    elif cfg.wide:
        model.wide.requires_grad_(cfg.wide_tune)  # as _fit_wide leaves it on rank 0 (its weights come with DDP)
    lengths = gather_rows([len(x) for x in x_train])  # every row's, in row order: the batch order
    label_counts = np.bincount(y_train, minlength=len(labels))
    weights = weights_for_counts(all_sum(label_counts.tolist()) if world > 1 else label_counts, cfg.class_weight)
    net = model
    if world > 1:  # same seed, same initial weights; DDP also broadcasts rank 0's at construction
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    steps = math.ceil(len(lengths) / cfg.batch_size)
    if cfg.lr_schedule == "cosine":  # stepped once per optimiser step
        warmup = steps if cfg.epochs > 1 else max(1, steps // 10)  # one epoch: a tenth of it, then the decay
        step_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: warmup_cosine(i, warmup, steps * cfg.epochs))
        sched = None
    else:
        step_sched = None
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=0.5, patience=max(1, cfg.patience // 2)
        )
    loss_fn = nn.CrossEntropyLoss(
        reduction="sum", weight=None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
    )
    rng = np.random.default_rng(cfg.seed)
    history, best_f1, best_state, best_epoch, stale = [], -1.0, None, 0, 0
    started = time.perf_counter()
    if wide is not None:  # epoch 0: the fitted linear model (the head is zero); training can only keep or beat it
        val = classification_metrics(y_val, predict_logits(model, x_val, pad, device).argmax(1), labels)
        history.append(
            {
                "epoch": 0,
                "train_loss": None,  # fitted by logistic regression, not by this loss
                "val_accuracy": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
                "lr": opt.param_groups[0]["lr"],
                "seconds": wide["fit_seconds"],
            }
        )
        best_f1, best_state = (
            val["macro_f1"],
            copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}),
        )
    if world > 1:  # the wide part's validation score (rank 0's): early stopping starts from it on every rank
        best_f1 = dist_broadcast(best_f1)
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        if progress:
            progress("epoch_start", {"epoch": epoch, "epochs": cfg.epochs, "steps": steps})
        order = bucketed_order(lengths, cfg.batch_size, rng)  # the same on every rank (same seed)
        for start in range(0, len(order), cfg.batch_size):
            global_idx = order[start : start + cfg.batch_size]
            idx = global_idx[global_idx % world == rank]  # this rank's rows of the global batch (row i: rank i % world)
            local = idx // world  # where they are in this rank's shard
            # A batch that gives this rank no row (small batches do) is still every rank's step: DDP's all-reduce
            # needs each rank's backward, so this one runs its shard's first row with the loss times 0 (a zero
            # gradient), and the update is the one a single process makes from the batch.
            rows = local if len(local) else np.zeros(1, dtype=np.int64)
            tok, lens = pad_batch([x_train[i] for i in rows], pad)
            target = torch.from_numpy(y_train[rows]).to(device)
            # Summed over this rank's rows, divided by the global batch: DDP averages gradients over the
            # ranks, so times world, the gradient is the global batch's mean, as one process computes it.
            batch_loss = loss_fn(net(torch.from_numpy(tok).to(device), torch.from_numpy(lens).to(device)), target)
            if not len(local):
                batch_loss = batch_loss * 0.0
            loss = batch_loss * world / len(global_idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            if step_sched is not None:
                step_sched.step()
            total += batch_loss.item()
            seen += len(idx)
            if progress:
                progress("step", {"loss": total / max(1, seen)})  # this rank's rows so far (none yet: 0)
        if world > 1:
            total, seen = all_sum([total, seen])
        # Validation on rank 0; its numbers go to every rank, so that the schedule and early stopping agree.
        val = None
        if rank == 0:
            val = classification_metrics(y_val, predict_logits(model, x_val, pad, device).argmax(1), labels)
            val = {"accuracy": val["accuracy"], "macro_f1": val["macro_f1"]}
        if world > 1:
            val = dist_broadcast(val)
        if sched is not None:
            sched.step(val["macro_f1"])
        record = {
            "epoch": epoch,
            "train_loss": total / max(1, seen),
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        improved = val["macro_f1"] > best_f1
        if improved:
            best_f1, best_epoch, stale = val["macro_f1"], epoch, 0
            if rank == 0:
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            stale += 1
        if progress:
            progress("epoch_end", {**record, "best": improved})
        log.log(
            logging.DEBUG if progress else logging.INFO,
            "epoch %d: loss %.4f val acc %.4f macro-F1 %.4f",
            epoch,
            record["train_loss"],
            val["accuracy"],
            val["macro_f1"],
        )
        if stale >= cfg.patience:
            log.info("early stop: no better validation macro-F1 for %d epochs", stale)
            break
    train_seconds = time.perf_counter() - started
    # what each rank held and its peak memory so far (on rank 0: the data stage's too, when it ran in this process)
    held = [0.0] * 2 * world
    held[2 * rank : 2 * rank + 2] = [len(train_rows), peak_rss_mib()]
    held = all_sum(held) if world > 1 else held
    if rank != 0:
        return {}  # only rank 0 evaluates and writes
    model.load_state_dict(best_state)
    model = model.cpu().eval()
    test_pred = predict_logits(model, x_test, pad, torch.device("cpu")).argmax(1)
    test = classification_metrics(y_test, test_pred, labels)
    val = classification_metrics(y_val, predict_logits(model, x_val, pad, torch.device("cpu")).argmax(1), labels)
    metrics = {
        "test": test,
        "val": {"accuracy": val["accuracy"], "macro_f1": val["macro_f1"]},
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_seconds": train_seconds + (wide["fit_seconds"] if wide else 0.0),  # the wide part's fit included
        "device": str(device),
        "threads": torch.get_num_threads(),  # intra-op threads it trained with (--threads)
        "parameters": sum(p.numel() for p in model.parameters()),
        "world_size": world,  # processes that trained it (torchrun), each on its share of every batch
        "ranks": [{"train_rows": int(held[2 * r]), "peak_rss_mib": round(held[2 * r + 1], 1)} for r in range(world)],
        "longest_train_tokens": longest,
        "class_weights": None if weights is None else {lab: round(float(w), 6) for lab, w in zip(labels, weights)},
    }
    if wide is not None:
        metrics["wide"] = wide
    metrics["test_predictions"] = [int(p) for p in test_pred]  # label index per test text: the paired comparison
    torch.save(best_state, out_dir / WEIGHTS)
    mcfg.save(out_dir / MODEL_CONFIG)
    (out_dir / TOKENIZER).write_text(tokenizer.spec.to_json(), encoding="utf-8")
    (out_dir / LABELS).write_text(json.dumps(list(labels), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / HISTORY).write_text(
        json.dumps({"config": asdict(cfg), "epochs": history}, indent=1) + "\n", encoding="utf-8"
    )
    return metrics


def model_config(cfg: TrainConfig, vocab_size: int, num_labels: int, pad_id: int = 0, **wide) -> ModelConfig:
    """The model's shape and regularisation as these training options give it (wide: wide_ngrams, wide_buckets)."""
    return ModelConfig(
        vocab_size=vocab_size,
        num_labels=num_labels,
        pad_id=pad_id,
        cell=cfg.cell,
        embed_dim=cfg.embed_dim,
        hidden_dim=cfg.hidden_dim,
        num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional,
        dropout=cfg.dropout,
        embed_dropout=cfg.embed_dropout,
        pooling=cfg.pooling,
        pair_buckets=cfg.pair_buckets,
        **wide,
    )


def _wide_options(cfg: TrainConfig, train_rows, fitted: dict | None = None) -> dict:
    """ModelConfig's wide_ngrams and wide_buckets for these options (none when --no-wide); those of the part
    fitted apart when there is one."""
    if not cfg.wide:
        return {}
    from seqship.pipeline.wide import default_ngrams

    if fitted is not None:
        ngrams = fitted["ngrams"]
    else:
        ngrams = cfg.wide_ngrams or default_ngrams(cfg.tokenizer, cfg.lowercase, [t for t, _ in train_rows])
    return {"wide_ngrams": ngrams, "wide_buckets": cfg.wide_buckets}


def _fit_wide(model: TextClassifier, cfg: TrainConfig, train, val, labels, pad: int) -> dict:
    """Fit the model's wide part (pipeline.wide), zero its recurrent head, freeze the wide part unless --wide-tune."""
    from seqship.pipeline.wide import fit_wide

    return _use_wide(model, cfg, fit_wide(model.wide, train, val, labels, pad, seed=cfg.seed))


def _use_wide(model: TextClassifier, cfg: TrainConfig, fitted: dict) -> dict:
    """After the wide part is fitted (its weights in `fitted["state"]` when fitted apart): zero the recurrent
    head, freeze the wide part unless --wide-tune."""
    state = fitted.pop("state", None)
    with torch.no_grad():
        if state is not None:
            model.wide.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
        model.head.weight.zero_()
        model.head.bias.zero_()
    model.wide.requires_grad_(cfg.wide_tune)
    log.info(
        "wide part: C=%g, class weight %s, validation macro-F1 %.4f (%.1f s)",
        fitted["C"],
        fitted["class_weight"],
        fitted["val"]["macro_f1"],
        fitted["fit_seconds"],
    )
    return fitted | {"tuned": cfg.wide_tune}


WIDE_JOB, WIDE_STATE, WIDE_FITTED = "job.json", "wide.npz", "fitted.json"


# The child's limit: below the collective timeout, so that the other ranks, waiting in a broadcast for rank 0's
# tokenizer and model (the wide part's shape), do not give up first and hide which wait ran out.
WIDE_FIT_TIMEOUT_S = COLLECTIVE_TIMEOUT.total_seconds() - 300


def _fit_wide_apart(split_dir: Path | None, tokenizer: Tokenizer, labels, cfg: TrainConfig, within: Path) -> dict:
    """Under torchrun, rank 0 holds only its shard, but the wide part is fitted on the whole training split: a
    child process reads it from the data stage's files and fits it (pipeline.wide), so that its memory goes
    back to the OS when it ends; it writes the part's arrays (.npz, no pickle) and what was chosen (JSON), in a
    folder inside `within` (the train stage's temporary folder: removed after, and if rank 0 is killed, swept
    by the next run with the rest of it). Returns fit_wide's record with the ngrams and, under "state", the
    part's arrays."""
    import subprocess
    import tempfile

    if split_dir is None:
        raise TrainError("--wide on several processes needs the data stage's folder (train(split_dir=...))")
    with tempfile.TemporaryDirectory(prefix="wide-fit-", dir=within) as tmp:
        job = {"split_dir": str(split_dir), "labels": list(labels), "config": asdict(cfg), "parent": os.getpid()}
        job |= {"tokenizer": json.loads(tokenizer.spec.to_json()), "threads": torch.get_num_threads()}
        Path(tmp, WIDE_JOB).write_text(json.dumps(job), encoding="utf-8")
        code = "import sys; from seqship.pipeline.train import fit_wide_child; fit_wide_child(sys.argv[1])"
        seconds = WIDE_FIT_TIMEOUT_S
        log.info("wide part: fitted on the whole training split in a child process (waiting up to %g s)", seconds)
        try:
            p = subprocess.run([sys.executable, "-c", code, tmp], capture_output=True, text=True, timeout=seconds)
        except subprocess.TimeoutExpired:
            raise TrainError(
                f"the wide part's fit (a child process of rank 0) ran out of its time limit of {seconds:g} s (the "
                f"other ranks wait {COLLECTIVE_TIMEOUT.total_seconds():g} s for it): train with --no-wide, or on "
                "less data"
            ) from None
        if p.returncode != 0:
            why = child_failure(p.returncode, p.stderr)
            raise TrainError(f"the wide part's fit (a child process of rank 0) failed: {why}")
        fitted = json.loads(Path(tmp, WIDE_FITTED).read_text(encoding="utf-8"))
        with np.load(Path(tmp, WIDE_STATE), allow_pickle=False) as arrays:
            fitted["state"] = {k: arrays[k] for k in arrays.files}
    return fitted


def child_failure(returncode: int, stderr: str) -> str:
    """Why a child process failed, in a few words: killed by a signal (named), else its last stderr line."""
    import signal

    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        hint = ": out of memory?" if name == "SIGKILL" else ""
        return f"killed by signal {-returncode} ({name}{hint})"
    lines = stderr.strip().splitlines() or [f"exit status {returncode}"]
    return lines[-1][:500]


def fit_wide_child(folder: str) -> None:
    """The child process of _fit_wide_apart: fit the wide part on the split files its job names, write the
    results into `folder`; a seqship error is its last stderr line and exit status 1."""
    from seqship.pipeline.data import read_split
    from seqship.pipeline.model import WideLinear
    from seqship.pipeline.wide import default_ngrams, fit_wide

    try:
        job = json.loads(Path(folder, WIDE_JOB).read_text(encoding="utf-8"))
        exit_with_parent(job["parent"])  # rank 0 killed (by torchrun): this fit stops too
        cfg, labels = TrainConfig(**job["config"]), job["labels"]
        tokenizer = Tokenizer(TokenizerSpec.from_dict(job["tokenizer"], "the training tokenizer"))
        torch.use_deterministic_algorithms(True)  # as train() trains
        torch.backends.mkldnn.enabled = False
        torch.set_num_threads(job["threads"])
        label_ids = {lab: i for i, lab in enumerate(labels)}

        def encode(split: str, rows):
            unknown = next((lab for _, lab in rows if lab not in label_ids), None)
            if unknown is not None:
                raise TrainError(
                    f"{Path(job['split_dir'], split + SPLIT_SUFFIX)}: label {unknown!r} is not one of the data "
                    f"stage's labels ({', '.join(map(repr, labels))}): the file changed after the data stage; "
                    "rerun it (pipeline run data --force)"
                )
            return encode_split(tokenizer, rows, label_ids)

        train_rows = read_split(Path(job["split_dir"]), "train")
        ngrams = cfg.wide_ngrams or default_ngrams(cfg.tokenizer, cfg.lowercase, [t for t, _ in train_rows])
        pad = tokenizer.spec.pad_id
        wide = WideLinear(tokenizer.vocab_size, len(labels), ngrams, cfg.wide_buckets, pad)
        train_ids = encode("train", train_rows)
        del train_rows
        val = encode("val", read_split(Path(job["split_dir"]), "val"))
        fitted = fit_wide(wide, train_ids, val, labels, pad, seed=cfg.seed)
    except SeqshipError as e:
        print(f"Error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    np.savez(Path(folder, WIDE_STATE), **{k: v.numpy() for k, v in wide.state_dict().items()})
    fitted["fit_peak_rss_mib"] = round(peak_rss_mib(), 1)  # the child's own: rank 0's does not include it
    Path(folder, WIDE_FITTED).write_text(json.dumps(fitted), encoding="utf-8")


def _load_run_tokenizer(path: Path) -> Tokenizer:
    """A run's own tokenizer. One written before the spec recorded its Unicode version (format 1) was made
    on this machine by this pipeline, so it is read as built with this Python's Unicode database; a
    shipped bundle gets no such benefit of the doubt (the runtime refuses format 1)."""
    d = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(d, dict) and d.get("format_version") == 1:
        d = {**d, "format_version": 2, "unicode_version": UNICODE_VERSION, "unassigned": unassigned_ranges()}
    return Tokenizer(TokenizerSpec.from_dict(d, str(path)))


def load_trained(train_dir: Path) -> tuple[TextClassifier, Tokenizer, list[str], dict]:
    """Rebuild the trained model (eval, CPU) from JSON config + weights, never unpickling objects."""
    try:
        mcfg = ModelConfig.load(train_dir / MODEL_CONFIG)
        tokenizer = _load_run_tokenizer(train_dir / TOKENIZER)
        labels = json.loads((train_dir / LABELS).read_text(encoding="utf-8"))
        metrics = json.loads((train_dir / METRICS).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise TrainError(f"{e.filename}: missing; run `pipeline run train` first") from None
    except (ValueError, TypeError) as e:
        raise TrainError(
            f"{train_dir}: unreadable training outputs ({e}); re-run `pipeline run train --force`"
        ) from None
    model = TextClassifier(mcfg)
    try:
        state = torch.load(train_dir / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except FileNotFoundError:
        raise TrainError(f"{train_dir / WEIGHTS}: missing; run `pipeline run train` first") from None
    except Exception as e:  # a truncated or foreign checkpoint fails in many ways; all mean "retrain"
        raise TrainError(
            f"{train_dir / WEIGHTS}: cannot be loaded ({type(e).__name__}: {str(e)[:200]}); "
            "re-run `pipeline run train --force`"
        ) from None
    return model.eval(), tokenizer, labels, metrics
