"""Deploy step: Triton model configs and local serving of the ONNX model."""
