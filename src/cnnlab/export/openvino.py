"""OpenVINO IR export: the checked fp32 ONNX graph converted by OpenVINO's own converter.

Written as a folder (`model_openvino/`: model.xml, model.bin and the model.xml.json sidecar), the layout
OpenVINO users know; weights are kept in fp32 (OpenVINO's `save_model` halves them by default). The
export's description is stored in the IR's rt_info too. The `openvino` package is optional: asking for
this format without it is an ExportError that names the `pip install` which fixes it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from cnnlab.errors import first_line
from cnnlab.export.errors import ExportError
from cnnlab.export.runtime import INFO_KEY, OPENVINO_XML, require_openvino


def write_openvino_ir(onnx_bytes: bytes, folder: Path, info: dict, label: str = "model") -> Path:
    """Convert the ONNX model to OpenVINO IR in `folder` (model.xml + model.bin, fp32); returns the .xml path."""
    ov = require_openvino()
    try:
        model = ov.convert_model(io.BytesIO(onnx_bytes))
    except Exception as e:
        raise ExportError(f"{label}: OpenVINO cannot convert the model ({first_line(e)})") from None
    model.set_rt_info(json.dumps(info), [INFO_KEY])
    xml = folder / OPENVINO_XML
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml
