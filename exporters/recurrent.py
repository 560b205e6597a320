"""A length-aware recurrent layer as one custom op, exported to ONE ONNX GRU/LSTM/RNN node with sequence_lens.

Why: the plain PyTorch formulation (gather-reversal for the backward direction, gather of position
length-1) exports, op by op, into ~70 ONNX nodes around two unidirectional GRU nodes. ONNX's own
GRU/LSTM take `sequence_lens` and a `bidirectional` direction, which is exactly this layer's meaning:
one node, no gathers, no padding work, and the final states come out directly. The dynamo exporter
maps the op through a custom translation; TorchScript never sees it (the scripted model keeps the
plain path, which C++ libtorch can load with no extra library). The parity gate proves the two agree.
"""
from __future__ import annotations

import torch
from torch import Tensor

OP_NAMESPACE = "seqship"
_ONNX_INT32 = 6


@torch.library.custom_op(f"{OP_NAMESPACE}::rnn_layer", mutates_args=())
def rnn_layer(
    x: Tensor, lengths: Tensor, params: list[Tensor], hidden_size: int, cell: str, bidirectional: bool
) -> tuple[Tensor, Tensor]:
    """(y [B, T, D*H] zero at padding, h [B, D*H] final state of each direction) for right-padded x [B, T, I].

    Eager implementation, for completeness and tests: the same gather formulation as the model's plain path.
    """
    B, T, _ = x.shape
    pos = torch.arange(T, device=x.device).unsqueeze(0)  # (1, T)
    length = lengths.unsqueeze(1)  # (B, 1)
    valid_b = pos < length
    rev = torch.where(valid_b, length - 1 - pos, pos)  # (B, T)
    last = (lengths - 1).view(-1, 1, 1)

    def run(inp: Tensor, p: list[Tensor]) -> Tensor:
        h0 = inp.new_zeros(1, B, hidden_size)
        if cell == "lstm":
            return torch.lstm(inp, [h0, h0], p, True, 1, 0.0, False, False, True)[0]
        if cell == "rnn":
            return torch.rnn_tanh(inp, h0, p, True, 1, 0.0, False, False, True)[0]
        return torch.gru(inp, h0, p, True, 1, 0.0, False, False, True)[0]

    def at_last(seq: Tensor) -> Tensor:
        return torch.gather(seq, 1, last.expand(-1, 1, seq.size(2))).squeeze(1)

    out_f = run(x, params[:4])
    if not bidirectional:
        return out_f * valid_b.unsqueeze(2), at_last(out_f)
    x_rev = torch.gather(x, 1, rev.unsqueeze(2).expand(-1, -1, x.size(2)))
    out_b_rev = run(x_rev, params[4:8])
    out_b = torch.gather(out_b_rev, 1, rev.unsqueeze(2).expand(-1, -1, out_b_rev.size(2)))
    y = torch.cat([out_f, out_b], 2) * valid_b.unsqueeze(2)
    return y, torch.cat([at_last(out_f), at_last(out_b_rev)], 1)


@rnn_layer.register_fake
def _rnn_layer_fake(x, lengths, params, hidden_size, cell, bidirectional):
    d = 2 if bidirectional else 1
    return x.new_empty(x.shape[0], x.shape[1], d * hidden_size), x.new_empty(x.shape[0], d * hidden_size)


def _onnx_rnn_layer(x, lengths, params, hidden_size, cell, bidirectional):
    """ONNX translation: one GRU/LSTM node over [T, B, I] with sequence_lens = lengths."""
    from onnxscript import opset20 as op

    H = hidden_size
    # PyTorch gate order -> ONNX gate order: GRU (r, z, n) -> (z, r, h); LSTM (i, f, g, o) -> (i, o, f, c);
    # a plain (tanh) RNN has one gate.
    order = {"gru": (1, 0, 2), "lstm": (0, 3, 1, 2), "rnn": (0,)}[cell]

    def reorder(w):
        parts = [op.Slice(w, starts=[i * H], ends=[(i + 1) * H], axes=[0]) for i in order]
        return op.Concat(*parts, axis=0)

    dirs = [params[0:4], params[4:8]] if bidirectional else [params[0:4]]
    W = op.Concat(*[op.Unsqueeze(reorder(p[0]), [0]) for p in dirs], axis=0)  # [D, n*H, I]
    R = op.Concat(*[op.Unsqueeze(reorder(p[1]), [0]) for p in dirs], axis=0)  # [D, n*H, H]
    B = op.Concat(*[op.Unsqueeze(op.Concat(reorder(p[2]), reorder(p[3]), axis=0), [0]) for p in dirs], axis=0)
    xt = op.Transpose(x, perm=[1, 0, 2])  # [T, B, I]
    seq_lens = op.Cast(lengths, to=_ONNX_INT32)
    direction = "bidirectional" if bidirectional else "forward"
    if cell == "gru":
        # linear_before_reset=1 is PyTorch's GRU formulation (the contract check asserts it).
        Y, Y_h = op.GRU(xt, W, R, B, sequence_lens=seq_lens, hidden_size=H, direction=direction, linear_before_reset=1)
    elif cell == "lstm":
        Y, Y_h, _ = op.LSTM(xt, W, R, B, sequence_lens=seq_lens, hidden_size=H, direction=direction)
    else:  # ONNX RNN's default activation is Tanh, as is nn.RNN's
        Y, Y_h = op.RNN(xt, W, R, B, sequence_lens=seq_lens, hidden_size=H, direction=direction)
    y = op.Reshape(op.Transpose(Y, perm=[2, 0, 1, 3]), op.Constant(value_ints=[0, 0, -1]))  # [B, T, D*H]
    h = op.Reshape(op.Transpose(Y_h, perm=[1, 0, 2]), op.Constant(value_ints=[0, -1]))  # [B, D*H]
    return y, h


TRANSLATIONS = {torch.ops.seqship.rnn_layer.default: _onnx_rnn_layer}
