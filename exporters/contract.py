"""The model contract as data: names, dtypes and symbolic axes that every export and runtime speaks."""

from __future__ import annotations

from dataclasses import asdict, dataclass

BATCH = "batch"
SEQ = "seq"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type, dims (a str is a symbolic axis)."""

    name: str
    dtype: str
    dims: tuple[str | int, ...]


@dataclass(frozen=True)
class ModelContract:
    """What `forward(token_ids, lengths) -> logits` looks like from outside."""

    num_labels: int  # size of the logits' last axis
    opset: int = 20  # ONNX opset the dynamo exporter targets (GRU/LSTM nodes exist since opset 7)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The input specs, in graph order."""
        return (
            TensorSpec("token_ids", "int64", (BATCH, SEQ)),  # right-padded with the tokenizer's pad_id
            TensorSpec("lengths", "int64", (BATCH,)),  # real tokens per row, 1..seq
        )

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The output specs, in graph order."""
        return (TensorSpec("logits", "float32", (BATCH, self.num_labels)),)

    @property
    def dynamic_shapes(self) -> tuple[dict[int, str], ...]:
        """torch.export's description of the symbolic axes, in input order."""
        return tuple({i: d for i, d in enumerate(spec.dims) if isinstance(d, str)} for spec in self.inputs)

    def signature(self) -> dict:
        """The io signature as JSON, for the manifest and the model card."""
        return {
            "inputs": [asdict(s) for s in self.inputs],
            "outputs": [asdict(s) for s in self.outputs],
            "opset": self.opset,
        }
