"""PyTorch model -> TorchScript and ONNX files, their contract checks, and the parity gate."""

if __name__ != "seqship.exporters":  # the checkout's folder imported under its bare name, from the repository root
    raise ImportError(
        f"seqship's code imports as seqship.exporters, not {__name__} (one namespace: `from seqship.exporters import ...`)"
    )
