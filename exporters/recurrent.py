"""A length-aware recurrent layer as one custom op, exported to ONNX without relying on `sequence_lens`.

Why a custom op: the plain PyTorch formulation (gather-reversal for the backward direction, gather of
position length-1) exports, op by op, into ~70 ONNX nodes. This op's translation writes the layer
directly: one forward-only GRU/LSTM/RNN node per direction, weights already in ONNX layout (constants
folded at export time, nothing re-packed at run time), and length-awareness expressed with ops that
every engine implements the same way.

Why not `sequence_lens`: the layer's correctness would then rest on an engine honouring that input,
and several do not (measured: onnx.reference ignores it, OpenVINO's CPU plugin ignores it whenever
shapes are dynamic, tract refuses a non-constant one). Here no recurrent node gets `sequence_lens`:
- forward direction: run over the padded rows; padding comes after the real tokens, so every real
  position's state is exact; the final state is read at position length-1 by a one-hot mask;
- backward direction: each row is reversed *within its own length* (ReverseSequence, which keeps
  padding at the end), run forward, read at length-1, and its outputs reversed back the same way;
- every recurrent node gets an explicit zero initial state (tract cannot infer one on a symbolic batch);
- outputs at padded positions are zeroed, so a stacked layer or max pooling never sees them.
TorchScript never sees the op (the scripted model keeps the plain path, which C++ libtorch loads with
no extra library). The parity gate proves the two agree, in every engine it finds.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

OP_NAMESPACE = "seqship"
# The version of the graph _onnx_rnn_layer writes: part of the export stage's inputs, so a run exported by
# an earlier graph is exported again (2: the zero initial state by Expand, which tract runs for every batch).
GRAPH_VERSION = 2
_ONNX_FLOAT = 1
# PyTorch gate order -> ONNX gate order: GRU (r, z, n) -> (z, r, h); LSTM (i, f, g, o) -> (i, o, f, c);
# a plain (tanh) RNN has one gate.
GATE_ORDER = {"gru": (1, 0, 2), "lstm": (0, 3, 1, 2), "rnn": (0,)}


def _reorder(w: Tensor, cell: str, H: int) -> Tensor:
    return torch.cat([w[i * H : (i + 1) * H] for i in GATE_ORDER[cell]], 0)


def _restore(w: Tensor, cell: str, H: int) -> Tensor:
    order = GATE_ORDER[cell]
    parts = [w[order.index(i) * H : (order.index(i) + 1) * H] for i in range(len(order))]
    return torch.cat(parts, 0)


def onnx_layout(params: list[Tensor], cell: str, hidden_size: int) -> list[Tensor]:
    """PyTorch's (w_ih, w_hh, b_ih, b_hh) per direction -> ONNX's (W [1,nH,I], R [1,nH,H], B [1,2nH]).

    Computed once at export time so the ONNX graph holds the weights as constants, in the layout its
    GRU/LSTM/RNN nodes read.
    """
    out = []
    with torch.no_grad():
        for d in range(0, len(params), 4):
            w_ih, w_hh, b_ih, b_hh = params[d : d + 4]
            out += [
                _reorder(w_ih, cell, hidden_size).unsqueeze(0).contiguous(),
                _reorder(w_hh, cell, hidden_size).unsqueeze(0).contiguous(),
                torch.cat([_reorder(b_ih, cell, hidden_size), _reorder(b_hh, cell, hidden_size)])
                .unsqueeze(0)
                .contiguous(),
            ]
    return out


@torch.library.custom_op(f"{OP_NAMESPACE}::rnn_layer", mutates_args=())
def rnn_layer(
    x: Tensor, lengths: Tensor, weights: list[Tensor], hidden_size: int, cell: str, bidirectional: bool, with_y: bool
) -> tuple[Tensor, Tensor]:
    """(y [B, T, D*H] zero at padding, h [B, D*H] final state of each direction) for right-padded x [B, T, I].

    `weights` are in ONNX layout (see onnx_layout). with_y=False: no later op reads y (an empty tensor).
    Eager implementation, for completeness and tests: the same gather formulation as the model's plain path.
    """
    B, T, _ = x.shape
    H = hidden_size
    pos = torch.arange(T, device=x.device).unsqueeze(0)  # (1, T)
    length = lengths.unsqueeze(1)  # (B, 1)
    valid_b = pos < length
    rev = torch.where(valid_b, length - 1 - pos, pos)  # (B, T)
    last = (lengths - 1).view(-1, 1, 1)

    def run(inp: Tensor, w: list[Tensor]) -> Tensor:
        W, R, Bias = w[0][0], w[1][0], w[2][0]
        n = Bias.shape[0] // 2
        p = [_restore(W, cell, H), _restore(R, cell, H), _restore(Bias[:n], cell, H), _restore(Bias[n:], cell, H)]
        h0 = inp.new_zeros(1, B, H)
        if cell == "lstm":
            return torch.lstm(inp, [h0, h0], p, True, 1, 0.0, False, False, True)[0]
        if cell == "rnn":
            return torch.rnn_tanh(inp, h0, p, True, 1, 0.0, False, False, True)[0]
        return torch.gru(inp, h0, p, True, 1, 0.0, False, False, True)[0]

    def at_last(seq: Tensor) -> Tensor:
        return torch.gather(seq, 1, last.expand(-1, 1, seq.size(2))).squeeze(1)

    out_f = run(x, weights[:3])
    if not bidirectional:
        return (out_f * valid_b.unsqueeze(2) if with_y else x.new_zeros(0)), at_last(out_f)
    x_rev = torch.gather(x, 1, rev.unsqueeze(2).expand(-1, -1, x.size(2)))
    out_b_rev = run(x_rev, weights[3:6])
    out_b = torch.gather(out_b_rev, 1, rev.unsqueeze(2).expand(-1, -1, out_b_rev.size(2)))
    y = torch.cat([out_f, out_b], 2) * valid_b.unsqueeze(2) if with_y else x.new_zeros(0)
    return y, torch.cat([at_last(out_f), at_last(out_b_rev)], 1)


@rnn_layer.register_fake
def _rnn_layer_fake(x, lengths, weights, hidden_size, cell, bidirectional, with_y):
    d = 2 if bidirectional else 1
    y = x.new_empty(x.shape[0], x.shape[1], d * hidden_size) if with_y else x.new_empty(0)
    return y, x.new_empty(x.shape[0], d * hidden_size)


def _onnx_rnn_layer(x, lengths, weights, hidden_size, cell, bidirectional, with_y):
    """ONNX translation: forward-only recurrent nodes, no sequence_lens, explicit zero initial state.

    Written for few recurrent nodes: each costs onnxruntime about 9 us per call before its steps (an index node
    about 0.2 us), which a one-text call feels: see pipeline/bench/variants.py.
    """
    from onnxscript import opset20 as op

    H = hidden_size
    D = 2 if bidirectional else 1
    one = op.Constant(value_int=1)
    last = op.Unsqueeze(op.Sub(lengths, one), [1])  # [B, 1]: the last real position
    # Zero initial state [1, B, H] (tract cannot run a recurrent node without one on a symbolic batch), by
    # broadcasting a [1, 1, H] constant to the shape [B, 1] of `last`: two nodes, no Concat. Not a Gather of
    # that constant with B zero indices (also two nodes): tract ran that graph for one text but refused every
    # batch of 2+ for a lone unidirectional LSTM ("Clashing resolution for expression. batch=2 != 1").
    zeros = op.Expand(op.Constant(value_floats=[0.0]), op.Constant(value_ints=[1, 1, H]))  # folded to a constant
    h0 = op.Expand(zeros, op.Shape(last))  # [1, B, H]

    def recur(inp, w):  # batch-major [B, T, I] in; onnxruntime's CPU kernels take only time-major (layout 0)
        xt = op.Transpose(inp, perm=[1, 0, 2])  # [T, B, I]
        if cell == "gru":
            # linear_before_reset=1 is PyTorch's GRU formulation (the contract check asserts it).
            Y, _ = op.GRU(xt, w[0], w[1], w[2], None, h0, hidden_size=H, linear_before_reset=1)
        elif cell == "lstm":
            Y, _, _ = op.LSTM(xt, w[0], w[1], w[2], None, h0, h0, hidden_size=H)
        else:  # ONNX RNN's default activation is Tanh, as is nn.RNN's
            Y, _ = op.RNN(xt, w[0], w[1], w[2], None, h0, hidden_size=H)
        return Y  # [T, 1, B, H]

    Y_f = recur(x, weights[0:3])
    if bidirectional:
        pos = op.Range(op.Constant(value_int=0), op.Gather(op.Shape(x), one), one)  # [T]
        # rev[b, t] = length_b - 1 - t for real tokens, t for padding: row b reversed within its length,
        # padding kept at the end. ReverseSequence says the same, but tract does not implement it; the
        # reference evaluator's GatherElements handles at most 64 steps; tract's GatherND aborts the process
        # on negative indices; |length_b - 1 - t| (one node fewer) trips tract's evaluation of the model's
        # own padding mask.
        rev = op.Unsqueeze(op.Where(op.Less(pos, op.Unsqueeze(lengths, [1])), op.Sub(last, pos), pos), [2])  # [B, T, 1]
        Y_b_rev = recur(op.GatherND(x, rev, batch_dims=1), weights[3:6])
        Y = op.Concat(Y_f, Y_b_rev, axis=1)  # [T, 2, B, H]
    else:
        Y = Y_f
    Yb = op.Transpose(Y, perm=[2, 0, 1, 3])  # [B, T, D, H]
    h = op.Reshape(op.GatherND(Yb, last, batch_dims=1), op.Constant(value_ints=[0, D * H]))  # [B, D*H] at length-1
    if not with_y:
        return op.Slice(op.Constant(value_floats=[0.0]), [0], [0]), h  # y: empty, no later op reads it
    pos = op.Range(op.Constant(value_int=0), op.Gather(op.Shape(x), one), one)  # [T]
    valid = op.Unsqueeze(op.Cast(op.Less(pos, op.Unsqueeze(lengths, [1])), to=_ONNX_FLOAT), [2])  # [B, T, 1]
    if not bidirectional:
        return op.Mul(op.Reshape(Yb, op.Constant(value_ints=[0, 0, H])), valid), h
    y_f = op.Transpose(op.Squeeze(Y_f, [1]), perm=[1, 0, 2])  # [B, T, H]
    y_b_rev = op.Transpose(op.Squeeze(Y_b_rev, [1]), perm=[1, 0, 2])
    y_b = op.GatherND(y_b_rev, rev, batch_dims=1)  # back in original order (rev is its own inverse)
    y = op.Concat(y_f, y_b, axis=2)
    return op.Mul(y, valid), h  # y [B, T, 2H], zero at padding


TRANSLATIONS = {torch.ops.seqship.rnn_layer.default: _onnx_rnn_layer}


def _fused_forward(self, x: Tensor, lengths: Tensor, rev: Tensor, valid: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
    """A recurrent layer's forward as the custom op, with the weights folded by `fused_recurrence`."""
    weights = [getattr(self, f"onnx_w{i}") for i in range(3 * (2 if self.bwd is not None else 1))]
    return rnn_layer(x, lengths, weights, self.hidden_dim, self.cell, self.bwd is not None, self.need_y)


def _recurrent_layers(model: nn.Module) -> list[nn.Module]:
    """The model's recurrent layers (pipeline.model.RecurrentLayer: `cell`, `hidden_dim`, `fwd`, `bwd`)."""
    return [m for m in model.modules() if all(hasattr(m, a) for a in ("cell", "hidden_dim", "fwd", "bwd", "need_y"))]


@contextmanager
def fused_recurrence(model: nn.Module) -> Iterator[nn.Module]:
    """Within this block each recurrent layer runs as one custom op with its weights folded into ONNX
    layout as buffers (constants in the export); the model is restored after. Weights are folded on
    entry: train more, then enter again."""
    patched: list[tuple[nn.Module, list[str]]] = []
    try:
        for layer in _recurrent_layers(model):
            params = list(layer.fwd.parameters()) + (list(layer.bwd.parameters()) if layer.bwd is not None else [])
            names = []
            for i, w in enumerate(onnx_layout(params, layer.cell, layer.hidden_dim)):
                layer.register_buffer(f"onnx_w{i}", w, persistent=False)
                names.append(f"onnx_w{i}")
            patched.append((layer, names))
            layer.forward = types.MethodType(_fused_forward, layer)
        yield model
    finally:
        for layer, names in patched:
            vars(layer).pop("forward", None)
            for name in names:
                delattr(layer, name)
