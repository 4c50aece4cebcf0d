"""Lower-precision ONNX: fp16 weights and activations, or int8 by ONNX Runtime static quantisation.

Both start from the fp32 graph of export/onnx.py (uint8 NHWC in, logits and probabilities out). Inputs and
outputs keep their types (uint8 in, float32 out), so a client needs no change whatever the precision.

- fp16: onnxruntime's own float16 converter (`keep_io_types`: casts are added at the edges).
- int8: `quantize_static` in QDQ format, weights int8 per output channel, activations uint8 with
  ranges from calibration images (MinMax). Only the network is quantised: the preprocessing (cast, scale,
  mean/std) and the probability head (softmax / sigmoid) stay float, so probabilities still sum to 1
  and the input is not rounded twice.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from cnnlab.export.errors import ExportError

# torch.onnx names the nodes of the wrapped network "/model/…"; the wrapper's own (preprocessing, head) are not.
NETWORK_SCOPE = "/model/"


def to_fp16(model_bytes: bytes) -> bytes:
    """The fp32 model with float16 weights and activations; uint8 input and float32 outputs kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load_from_string(model_bytes)
    try:
        half = convert_float_to_float16(proto, keep_io_types=True)
    except Exception as e:
        raise ExportError(f"the model cannot be converted to fp16 ({_first_line(e)})") from None
    return half.SerializeToString()


def _calibration_reader(images: np.ndarray, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds the calibration images to the quantiser in batches."""

        def __init__(self):
            self._batches = iter(range(0, len(images), batch))

        def get_next(self):
            i = next(self._batches, None)
            return None if i is None else {"images": np.ascontiguousarray(images[i : i + batch], dtype=np.uint8)}

    return Reader()


def to_int8(model_bytes: bytes, calibration: np.ndarray, batch: int = 16) -> bytes:
    """Static int8 quantisation of the fp32 model, activation ranges from `calibration` (uint8 N, H, W, C)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    if len(calibration) == 0:
        raise ExportError("int8 quantisation needs calibration images; none were given")
    proto = onnx.load_from_string(model_bytes)
    outside = [n.name for n in proto.graph.node if not n.name.startswith(NETWORK_SCOPE)]
    with tempfile.TemporaryDirectory(prefix="cnnlab-int8-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(model_bytes)
        try:
            # Shape inference and graph optimisation first, as onnxruntime recommends before quantising.
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(out), _calibration_reader(calibration, batch), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=outside, calibrate_method=CalibrationMethod.MinMax)
        except ExportError:
            raise
        except Exception as e:
            raise ExportError(f"onnxruntime could not quantise the model to int8 ({_first_line(e)})") from None
        return out.read_bytes()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
