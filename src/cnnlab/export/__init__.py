"""Export trained models to portable formats (ONNX)."""

from cnnlab.export.onnx import export_onnx

__all__ = ["export_onnx"]
