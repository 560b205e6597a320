"""PyTorch model -> TorchScript and ONNX files, their contract checks, and the parity gate."""
