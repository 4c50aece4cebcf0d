"""`cnnlab export MODEL|RUN --format onnx [--opset N] [--out FILE] [--json]`."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("export", help="export a trained model (ONNX), verified against PyTorch")
    p.add_argument("model", metavar="MODEL|RUN_DIR", help="run folder or model.safetensors file")
    p.add_argument("--format", choices=("onnx",), required=True, help="export format")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--out", metavar="FILE.onnx", default=None, help="output file (default RUN/model.onnx)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from cnnlab.export.onnx import MAX_ABS_DIFF, export_onnx

    result = export_onnx(args.model, out=args.out, opset=args.opset)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {result['path']} (opset {result['opset']}, dynamic batch axis; preprocessing in the graph)")
        print(f"wrote {result['sidecar']} (class names, input shape, normalisation)")
        print(f"onnxruntime vs PyTorch: max abs diff {result['max_abs_diff']:.2e} (limit {MAX_ABS_DIFF:g}) "
              f"on batch sizes {', '.join(map(str, result['checked_batch_sizes']))}")
    return 0
