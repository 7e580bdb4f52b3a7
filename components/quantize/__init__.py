"""Quantize step: smaller, faster ONNX candidates measured against fp32 and chosen within an accuracy budget."""
