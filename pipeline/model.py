"""The classifier: token embedding + length-aware (bi)directional recurrent layers + linear head.

Length-aware without pack_padded_sequence (which the dynamo ONNX exporter cannot export): the forward
direction reads its output at position length-1; the backward direction runs on each row reversed
*within its own length* (an index gather), so padding never enters a real position's state. A padded
row therefore gives the same logits as the same row run alone.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Tuple

import torch
from torch import nn

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the module; saved as JSON beside the weights."""

    vocab_size: int  # embedding rows = len(tokenizer vocab)
    num_labels: int  # logits per row = len(labels)
    pad_id: int = 0  # embedding row that padding uses (kept at zero)
    cell: str = "gru"  # recurrent cell: "gru" or "lstm"
    embed_dim: int = 64  # E: size of a token embedding
    hidden_dim: int = 128  # H: recurrent state size per direction
    num_layers: int = 1  # stacked recurrent layers
    bidirectional: bool = True  # add a backward direction (2H features into the head)
    dropout: float = 0.1  # between layers and before the head; inactive in eval mode

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        for name in ("vocab_size", "num_labels", "embed_dim", "hidden_dim", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "ModelConfig":
        return cls(**json.loads(path.read_text(encoding="utf-8")))


class RecurrentLayer(nn.Module):
    """One layer: forward direction, and optionally a backward one over length-reversed rows."""

    def __init__(self, cell: str, input_dim: int, hidden_dim: int, bidirectional: bool):
        super().__init__()
        self.fwd = CELLS[cell](input_dim, hidden_dim, batch_first=True)
        self.bwd = CELLS[cell](input_dim, hidden_dim, batch_first=True) if bidirectional else None

    def forward(
        self, x: torch.Tensor, rev: torch.Tensor, valid: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x (B, T, I); rev (B, T) index that reverses each row within its length; valid (B, T, 1)
        out_f, _ = self.fwd(x)  # (B, T, H)
        bwd = self.bwd
        if bwd is None:
            return out_f * valid, out_f, out_f
        x_rev = torch.gather(x, 1, rev.unsqueeze(2).expand(-1, -1, x.size(2)))  # (B, T, I)
        out_b_rev, _ = bwd(x_rev)  # (B, T, H), position t = backward state at original length-1-t
        out_b = torch.gather(out_b_rev, 1, rev.unsqueeze(2).expand(-1, -1, out_b_rev.size(2)))
        return torch.cat([out_f, out_b], 2) * valid, out_f, out_b_rev  # (B, T, 2H)


class TextClassifier(nn.Module):
    """forward(token_ids [B, T] int64, lengths [B] int64) -> logits [B, C] float32."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dirs = 2 if cfg.bidirectional else 1
        self.bidirectional = cfg.bidirectional
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        self.layers = nn.ModuleList(
            [
                RecurrentLayer(cfg.cell, cfg.embed_dim if i == 0 else cfg.hidden_dim * dirs, cfg.hidden_dim, cfg.bidirectional)
                for i in range(cfg.num_layers)
            ]
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_dim * dirs, cfg.num_labels)

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed(token_ids)  # (B, T, E)
        pos = torch.arange(token_ids.size(1), device=token_ids.device).unsqueeze(0)  # (1, T)
        length = lengths.unsqueeze(1)  # (B, 1)
        valid_mask = pos < length  # (B, T)
        rev = torch.where(valid_mask, length - 1 - pos, pos)  # (B, T); padding maps to itself
        valid = valid_mask.unsqueeze(2).to(x.dtype)  # (B, T, 1)
        last = (lengths - 1).view(-1, 1, 1)  # (B, 1, 1)
        out_f = x
        out_b_rev = x
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            x, out_f, out_b_rev = layer(x, rev, valid)
        h = torch.gather(out_f, 1, last.expand(-1, 1, out_f.size(2))).squeeze(1)  # (B, H)
        if self.bidirectional:
            h_b = torch.gather(out_b_rev, 1, last.expand(-1, 1, out_b_rev.size(2))).squeeze(1)  # (B, H)
            h = torch.cat([h, h_b], 1)  # (B, 2H)
        return self.head(self.dropout(h))  # (B, C)
