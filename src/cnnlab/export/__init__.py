"""Export trained models to portable formats: ONNX (fp32, fp16, int8), TorchScript, OpenVINO IR.

`export_model` builds, checks against PyTorch and writes any format; `load_exported` runs the result.
"""

from cnnlab.export.errors import ExportError
from cnnlab.export.formats import FORMATS, export_model
from cnnlab.export.onnx import export_onnx
from cnnlab.export.runtime import ExportedModel, load_exported

__all__ = ["FORMATS", "ExportError", "ExportedModel", "export_model", "export_onnx", "load_exported"]
