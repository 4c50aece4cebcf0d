"""`cnnlab export MODEL|RUN --format onnx|onnx-fp16|onnx-int8|torchscript|openvino [--calibration N] [--data SPEC]
[--opset N] [--out PATH] [--json]`."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("export", help="export a trained model (ONNX fp32/fp16/int8, TorchScript, OpenVINO), checked against PyTorch")
    p.add_argument("model", metavar="MODEL|RUN_DIR", help="run folder or model.safetensors file")
    # No argparse `choices`: an unknown format is export_model's one-line ConfigError (exit 2) listing the formats.
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help="onnx (fp32), onnx-fp16, onnx-int8 (calibrated), torchscript or openvino (needs `pip install openvino`)")
    p.add_argument("--calibration", type=int, default=100, metavar="N",
                   help="onnx-int8: calibration images drawn from the training data (default 100)")
    p.add_argument("--data", metavar="SPEC", default=None,
                   help="onnx-fp16/onnx-int8: data to calibrate and check with (default: the run's own, config.yaml `data`)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17; int8 needs 13+)")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="output file, or folder for openvino (default: RUN/model.onnx, model.fp16.onnx, model.int8.onnx, model.torchscript,"
                        " model_openvino/)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    import onnx  # noqa: F401  (the export extra: without it, say which pip install adds it before any work)
    import onnxruntime  # noqa: F401

    from cnnlab.api import dataset_for_model, load
    from cnnlab.errors import ConfigError
    from cnnlab.export.formats import export_model, get_format

    fmt = get_format(args.format)  # unknown format: one line before anything is loaded
    clf = load(args.model)
    data = None
    if fmt.precision != "fp32":  # fp16/int8 are checked (and int8 calibrated) on the model's own data
        spec = args.data or (clf.meta.get("config") or {}).get("data")
        if not spec:
            raise ConfigError(f"{args.model}: --format {fmt.name} needs images to check the export with, and the model "
                              "records no training data — pass --data SPEC (data with the model's classes)")
        data = dataset_for_model(clf, spec)
    result = export_model(clf, out=args.out, format=fmt.name, data=data, calibration=args.calibration, opset=args.opset)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"wrote {result['path']} ({result['format']}: {result['precision']}, {result['size_bytes'] / 1e6:.2f} MB; "
          f"uint8 NHWC in, preprocessing inside the model)")
    print(f"wrote {result['sidecar']} (class names, input shape, normalisation, the check's figures)")
    if result["precision"] == "fp32":
        print(f"{result['runtime']} vs PyTorch: max abs diff {result['max_abs_diff']:.2e} (limit {result['tolerance']:g}) "
              f"on batch sizes {', '.join(map(str, result['checked_batch_sizes']))}")
    else:
        line = (f"{'label-set' if result.get('agreement_on') == 'label sets' else 'top-1'} agreement with PyTorch: {result['agreement']:.2%} of {result['holdout_images']} held-out images "
                f"({result['holdout_from']}; floor {result['agreement_floor']:.0%})")
        if "accuracy" in result:
            line += f"; accuracy {result['accuracy']:.2%} (PyTorch {result['torch_accuracy']:.2%})"
        if "calibration_images" in result:
            line += f"; calibrated on {result['calibration_images']} images of the {result['calibration_from']}"
        print(line)
    return 0
