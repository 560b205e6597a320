"""The classifier: token embedding + length-aware (bi)directional recurrent layers + linear head.

Length-aware without pack_padded_sequence (which the dynamo ONNX exporter cannot export): the forward
direction reads its output at position length-1; the backward direction runs on each row reversed
*within its own length* (an index gather), so padding never enters a real position's state. A padded
row therefore gives the same logits as the same row run alone. This file is the nn.Module only: for ONNX
export, exporters.recurrent.fused_recurrence swaps each layer's forward for one custom op.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

POOLINGS = ("last", "max", "last+max")
# Pair buckets stay below 2**24 even summed, so every engine computes them exactly: OpenVINO's CPU plugin
# does int64 arithmetic through float32 and 32-bit integers (a (a * V + b) mod N hash went wrong there for
# vocabularies over ~4,096 tokens).
MAX_PAIR_BUCKETS = 2**20
PAIR_TABLE_SEED = 0x5E05  # the per-token hash tables: fixed, and stored in the weights anyway
CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}  # nn.RNN: tanh
# Options added after runs and bundles were written, at the value that behaves exactly as before they
# existed: left out of what is recorded (model_config.json, a stage's inputs), so files from an earlier
# seqship stay current here and files written here stay readable by it.
NEUTRAL_DEFAULTS = {
    "pair_buckets": 0,
    "wide": False,
    "wide_ngrams": 0,
    "wide_buckets": 2**18,
    "wide_tune": False,
}
# The wide part's hashed n-gram buckets: a power of two up to 2**20, and n-grams of 1 to at most MAX_WIDE_NGRAMS
# tokens, so that a hash (at most MAX_WIDE_NGRAMS + 1 table entries below the buckets) stays below 2**24 and its
# remainder is exact in float32 (OpenVINO computes int64 through float32).
MAX_WIDE_BUCKETS = 2**20
MAX_WIDE_NGRAMS = 8
WIDE_TABLE_SEED = 0x3DE5


def without_neutral(options: dict) -> dict:
    """`options` less those at their NEUTRAL_DEFAULTS value."""
    return {k: v for k, v in options.items() if k not in NEUTRAL_DEFAULTS or v != NEUTRAL_DEFAULTS[k]}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the module; saved as JSON beside the weights."""

    vocab_size: int  # embedding rows = len(tokenizer vocab)
    num_labels: int  # logits per row = len(labels)
    pad_id: int = 0  # embedding row that padding uses (kept at zero)
    cell: str = "gru"  # recurrent cell: "gru", "lstm" or "rnn" (tanh)
    embed_dim: int = 64  # E: size of a token embedding
    hidden_dim: int = 128  # H: recurrent state size per direction
    num_layers: int = 1  # stacked recurrent layers
    bidirectional: bool = True  # add a backward direction (2H features into the head)
    dropout: float = 0.1  # between layers and before the head; inactive in eval mode
    embed_dropout: float = 0.0  # on token embeddings while training; inactive in eval mode
    pooling: str = "last"  # head input: "last" state per direction, "max" over real positions, or "last+max"
    # > 0: add to each token's embedding a hashed embedding of the pair (this token a, next token b; padding
    # after the last). Computed inside the model from the token ids, so the tokenizer and every consumer stay
    # as they are (see TextClassifier.pair_bucket). A padded row still equals the row alone: its last real
    # token pairs with padding whatever follows it.
    pair_buckets: int = 0
    # > 0: a "wide" linear part beside the recurrent one, on the TF-IDF of the text's token n-grams of 1 to
    # wide_ngrams tokens, hashed into wide_buckets buckets inside the model (see WideLinear); its logits are added
    # to the head's. 0: none.
    wide_ngrams: int = 0
    wide_buckets: int = 2**18

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        for name in ("dropout", "embed_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("vocab_size", "num_labels", "embed_dim", "hidden_dim", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.pair_buckets <= MAX_PAIR_BUCKETS:
            raise ValueError(
                f"pair_buckets must be from 0 (no pair embedding) to {MAX_PAIR_BUCKETS}, got {self.pair_buckets}"
            )

        if not 0 <= self.wide_ngrams <= MAX_WIDE_NGRAMS:
            raise ValueError(f"wide_ngrams must be from 0 (no wide part) to {MAX_WIDE_NGRAMS}, got {self.wide_ngrams}")
        if not (2 <= self.wide_buckets <= MAX_WIDE_BUCKETS and self.wide_buckets & (self.wide_buckets - 1) == 0):
            raise ValueError(
                f"wide_buckets must be a power of two from 2 to {MAX_WIDE_BUCKETS}, got {self.wide_buckets}"
            )

    def save(self, path: Path) -> None:
        """Write the config as JSON; pair_buckets only when on, so a model without pairs is written as an
        earlier seqship wrote it (and that seqship, and its bundle tools, can still read it)."""
        path.write_text(json.dumps(without_neutral(asdict(self)), indent=1, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        """Read a config written by save()."""
        return cls(**json.loads(path.read_text(encoding="utf-8")))


class RecurrentLayer(nn.Module):
    """One layer: forward direction, and optionally a backward one over length-reversed rows."""

    def __init__(self, cell: str, input_dim: int, hidden_dim: int, bidirectional: bool):
        super().__init__()
        self.cell = cell
        self.hidden_dim = hidden_dim
        self.bidirectional = bidirectional
        self.need_y = True  # whether the next layer or the pooling reads y (set by TextClassifier)
        self.fwd = CELLS[cell](input_dim, hidden_dim, batch_first=True)
        self.bwd = CELLS[cell](input_dim, hidden_dim, batch_first=True) if bidirectional else None

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, rev: torch.Tensor, valid: torch.Tensor, last: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """y [B, T, D*H] (zero at padding) and each direction's state after the last real token [B, D*H]."""
        # x (B, T, I); rev (B, T) reverses each row within its length; valid (B, T, 1); last (B, 1, 1) = length-1
        out_f, _ = self.fwd(x)  # (B, T, H)
        h_f = torch.gather(out_f, 1, last.expand(-1, 1, out_f.size(2))).squeeze(1)  # (B, H)
        bwd = self.bwd
        if bwd is None:
            return out_f * valid, h_f
        x_rev = torch.gather(x, 1, rev.unsqueeze(2).expand(-1, -1, x.size(2)))  # (B, T, I)
        out_b_rev, _ = bwd(x_rev)  # (B, T, H); position t holds the backward state at original length-1-t
        h_b = torch.gather(out_b_rev, 1, last.expand(-1, 1, out_b_rev.size(2))).squeeze(1)  # (B, H)
        out_b = torch.gather(out_b_rev, 1, rev.unsqueeze(2).expand(-1, -1, out_b_rev.size(2)))
        return torch.cat([out_f, out_b], 2) * valid, torch.cat([h_f, h_b], 1)  # (B, T, 2H), (B, 2H)


class WideLinear(nn.Module):
    """The "wide" part: a linear map of the TF-IDF of the text's token n-grams, computed from the ids in the graph.

    The recipe of the linear baseline (sklearn's TfidfVectorizer with sublinear_tf, smooth idf and an L2 norm),
    on hashed n-grams of the tokenizer's ids: the n-gram of n tokens from position t falls in bucket
    (sum over k < n of table_k[id at t+k]) + offset_n, modulo the buckets (a power of two, and every sum below
    2**24: exact in float32, as OpenVINO computes int64). Counts are per row and per n: an occurrence's count is
    the number of equal buckets among the row's real n-grams of its length (a T x T comparison; no scatter, no
    sort, static shapes). Padding is never an n-gram, so a padded row gives what the row gives alone.

    idf is a buffer set when the part is fitted (pipeline.wide); a bucket no training text has gets idf 0, as
    sklearn drops n-grams it never saw.
    """

    def __init__(self, vocab_size: int, num_labels: int, ngrams: int, buckets: int, pad_id: int):
        super().__init__()
        self.ngrams = ngrams
        self.buckets = buckets
        self.pad_id = pad_id
        g = torch.Generator().manual_seed(WIDE_TABLE_SEED)
        self.register_buffer("tables", torch.randint(0, buckets, (ngrams, vocab_size), generator=g))
        self.register_buffer("offsets", torch.randint(0, buckets, (ngrams,), generator=g))
        self.register_buffer("idf", torch.ones(buckets))
        self.weight = nn.Parameter(torch.zeros(buckets, num_labels))
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def _parts(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(bucket [B, N, T] int64, share [B, N, T], squared norm [B]): an occurrence's share of its bucket's TF-IDF
        value (0 where the n-gram runs past the row's end), and the squared L2 norm of the row's TF-IDF vector."""
        T = token_ids.size(1)
        shift = torch.arange(self.ngrams, device=token_ids.device).unsqueeze(1)  # (N, 1): k
        window = shift + torch.arange(T, device=token_ids.device).unsqueeze(0)  # (N, T): position t + k
        # token t + k through table k, summed over k <= n - 1: every n-gram from every t at once (one Gather of the
        # stacked tables, one CumSum over k); below (N + 1) * buckets <= 9 * 2**20 < 2**24 with the offset, and
        # buckets a power of two, so float32 (OpenVINO's int64) takes the remainder exactly. Positions past T read
        # the row's last column: such n-grams are not real (below), so what they hash to never counts.
        at = torch.clamp(window, max=T - 1).reshape(-1)  # one Gather along the row, no advanced indexing
        ids = token_ids.index_select(1, at).view(-1, self.ngrams, T) + shift * self.tables.size(1)
        codes = nn.functional.embedding(ids, self.tables.reshape(-1, 1)).squeeze(3)  # a Gather (indexing: GatherND)
        bucket = torch.remainder(torch.cumsum(codes, 1) + self.offsets.unsqueeze(1), self.buckets)
        # the n-gram of k + 1 tokens from t is real when its last token, t + k, is before the row's length
        real = (window.unsqueeze(0) < lengths.view(-1, 1, 1)).to(self.idf.dtype)  # (B, N, T)
        same = (bucket.unsqueeze(3) == bucket.unsqueeze(2)).to(real.dtype)  # (B, N, T, T)
        count = torch.matmul(same, real.unsqueeze(3)).squeeze(3).clamp(min=1.0)  # occurrences of each bucket
        tfidf = (1.0 + torch.log(count)) * nn.functional.embedding(bucket, self.idf.unsqueeze(1)).squeeze(3)
        share = tfidf / count * real  # each of a bucket's occurrences holds 1/count of its value
        return bucket, share, (share * tfidf).double().sum((1, 2))  # float64 sums: see forward

    def terms(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bucket [B, N, T] int64, value [B, N, T] float32) of each n-gram occurrence: summed per row and bucket,
        the values are the row's L2-normalised TF-IDF vector (padding and n-grams past a row's end are 0)."""
        bucket, share, sq = self._parts(token_ids, lengths)
        return bucket, share / _norm(sq).float().view(-1, 1, 1)

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of the linear part: the weights' rows summed by the row's normalised TF-IDF, plus the bias."""
        bucket, share, sq = self._parts(token_ids, lengths)
        weights = nn.functional.embedding(bucket, self.weight)  # (B, N, T, C)
        # Summed in float64: a long row's terms are large and cancel (shopping-cats' fitted weights at T=4096: |terms|
        # summed ~2e4 for a logit of 1.2), so float32 sums in another order (onnxruntime, onnx.reference) were 2.3e-5
        # apart, past the gate's 1e-5 + 1e-5 * |ref|. Each product of two float32 is exact in float64.
        logits = (share.double().unsqueeze(3) * weights.double()).sum((1, 2)) / _norm(sq).unsqueeze(1)
        return logits.float() + self.bias


def _norm(sq: torch.Tensor) -> torch.Tensor:
    """The L2 norm from its square. A row's TF-IDF values are 0 or >= 1 (tf >= 1; fitted idf is 0 or >= 1), so its
    square is 0 or >= 1, and max(sq, 1) leaves it as it is except that a row of no known n-gram divides by 1."""
    return sq.clamp(min=1.0).sqrt()


class TextClassifier(nn.Module):
    """forward(token_ids [B, T] int64, lengths [B] int64) -> logits [B, C] float32."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dirs = 2 if cfg.bidirectional else 1
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        self.pad_id = cfg.pad_id
        self.pair_buckets = cfg.pair_buckets
        self.pair_embed = nn.Embedding(cfg.pair_buckets, cfg.embed_dim) if cfg.pair_buckets > 0 else None
        if cfg.pair_buckets > 0:
            # pair bucket = (first[a] + second[b]) mod N, from two random per-token tables: no product of ids, so
            # nothing exceeds 2N (exact in float32), and no structure shared with the vocabulary size
            g = torch.Generator().manual_seed(PAIR_TABLE_SEED)
            self.register_buffer("pair_first", torch.randint(0, cfg.pair_buckets, (cfg.vocab_size,), generator=g))
            self.register_buffer("pair_second", torch.randint(0, cfg.pair_buckets, (cfg.vocab_size,), generator=g))
        self.layers = nn.ModuleList(
            [
                RecurrentLayer(
                    cfg.cell, cfg.embed_dim if i == 0 else cfg.hidden_dim * dirs, cfg.hidden_dim, cfg.bidirectional
                )
                for i in range(cfg.num_layers)
            ]
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.embed_dropout = nn.Dropout(cfg.embed_dropout)
        self.pooling = cfg.pooling
        for i, layer in enumerate(self.layers):
            layer.need_y = i < cfg.num_layers - 1 or cfg.pooling != "last"
        features = cfg.hidden_dim * dirs * (2 if cfg.pooling == "last+max" else 1)
        self.head = nn.Linear(features, cfg.num_labels)
        self.wide = (
            WideLinear(cfg.vocab_size, cfg.num_labels, cfg.wide_ngrams, cfg.wide_buckets, cfg.pad_id)
            if cfg.wide_ngrams > 0
            else None
        )

    def pair_bucket(self, token_ids: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) bucket of each (token, next token) pair; the next token of a row's last real token is padding."""
        pad = torch.full_like(token_ids[:, :1], self.pad_id)
        # the mask shifted by one, not a second comparison of positions with lengths (tract failed on that graph)
        next_valid = torch.cat([valid_mask[:, 1:], torch.zeros_like(valid_mask[:, :1])], 1)
        nxt = torch.where(next_valid, torch.cat([token_ids[:, 1:], pad], 1), pad)
        bucket = self.pair_first[token_ids] + self.pair_second[nxt]  # each in [0, N): the sum is below 2N
        return torch.where(bucket >= self.pair_buckets, bucket - self.pair_buckets, bucket)

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] for right-padded token ids [B, T] and their lengths [B]."""
        x = self.embed(token_ids)  # (B, T, E)
        pos = torch.arange(token_ids.size(1), device=token_ids.device).unsqueeze(0)  # (1, T)
        length = lengths.unsqueeze(1)  # (B, 1)
        valid_mask = pos < length  # (B, T)
        pair_embed = self.pair_embed
        if pair_embed is not None:
            x = x + pair_embed(self.pair_bucket(token_ids, valid_mask))
        x = self.embed_dropout(x)
        rev = torch.where(valid_mask, length - 1 - pos, pos)  # (B, T); padding maps to itself
        valid = valid_mask.unsqueeze(2).to(x.dtype)  # (B, T, 1)
        last = (lengths - 1).view(-1, 1, 1)  # (B, 1, 1)
        h = x[:, 0]  # replaced by the first layer; TorchScript needs it defined
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            x, h = layer(x, lengths, rev, valid, last)
        if self.pooling != "last":
            # Max over real positions only: padding is the lowest float here (every row has a real position, so
            # it never wins), so a padded row pools what it pools alone. Not -inf: a bundle's graph holds no
            # non-finite constant, so the runtime can refuse every one of them as damage.
            lowest = torch.full_like(x, -3.4028234663852886e38)  # float32 min (TorchScript cannot call finfo)
            pooled = torch.where(valid_mask.unsqueeze(2), x, lowest).amax(1)  # (B, D*H)
            h = pooled if self.pooling == "max" else torch.cat([h, pooled], 1)
        logits = self.head(self.dropout(h))  # (B, C)
        wide = self.wide
        if wide is not None:
            logits = logits + wide(token_ids, lengths)
        return logits
