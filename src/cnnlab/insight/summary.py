"""Model summary: per layer output shape, parameters, multiply-accumulates, receptive field, stride, memory.

Works for any model without knowing its architecture: one image runs through `forward_features` and then
`forward_head` under a `TorchFunctionMode` that sees every torch operation — module calls (nn.Conv2d calls
F.conv2d) and functional ones alike (seed_cnn's F.max_pool2d). Each tensor carries its receptive field
(r, in input pixels) and its stride (j, the input distance between two neighbouring outputs):

    conv / pool with kernel k, stride s, dilation d:   r_out = r_in + (k - 1) * d * j_in,   j_out = j_in * s
    anything else (ReLU, BN, add, concat, ...):        the largest (r, j) of its inputs (residual branches merge)
    global pooling, flatten, linear on a vector:       "global" (every output sees the whole image)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

GLOBAL = "global"


def _name(func) -> str:
    return getattr(func, "__name__", str(func)).lstrip("_")


SPATIAL = {"conv1d", "conv2d", "conv3d", "max_pool2d", "avg_pool2d", "max_pool2d_with_indices", "max_pool1d", "avg_pool1d"}
LAYER_OPS = SPATIAL | {"linear", "adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "batch_norm",
                       "layer_norm", "group_norm", "instance_norm", "relu", "relu_", "relu6", "gelu", "silu", "hardswish",
                       "hardsigmoid", "sigmoid", "tanh", "leaky_relu", "elu", "dropout", "flatten"}


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _first(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


class _Recorder(TorchFunctionMode):
    """Propagates (receptive field, stride) through every op and records one row per layer op."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.info: dict[int, tuple] = {}   # id(tensor) -> (rf, jump) or (GLOBAL, None)
        self.keep: list[torch.Tensor] = []  # keep tensors alive so ids are not reused
        self.rows: list[dict] = []
        self.stack: list[str] = []
        self.part = "features"
        self.counted: set[int] = set()
        self.names = {m: n for n, m in model.named_modules()}
        self.modules = dict(model.named_modules())

    def set(self, t: torch.Tensor, value: tuple) -> None:
        self.info[id(t)] = value
        self.keep.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _name(func)
        ins = [self.info[id(t)] for t in _tensors(args) + _tensors(kwargs) if id(t) in self.info]
        if not ins:
            return out
        outs = _tensors(out)
        if any(i[0] == GLOBAL for i in ins):
            value = (GLOBAL, None)
        else:
            rf, jump = max(i[0] for i in ins), max(i[1] for i in ins)
            value = (rf, jump)
            x = _tensors(args)[0] if _tensors(args) else None
            if name in SPATIAL:
                if name.startswith("conv"):
                    k = _first(_arg(args, kwargs, 1, "weight", None).shape[2])
                    s, d = _first(_arg(args, kwargs, 3, "stride", 1)), _first(_arg(args, kwargs, 5, "dilation", 1))
                else:
                    k = _first(_arg(args, kwargs, 1, "kernel_size", 1))
                    s = _arg(args, kwargs, 2, "stride", None)
                    s = k if s in (None, [], ()) else _first(s)
                    d = _first(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else 1
                value = (rf + (k - 1) * d * jump, jump * s)
            elif (name == "linear" and x is not None and x.ndim <= 2) or name.startswith("adaptive"):
                value = (GLOBAL, None)  # (a linear layer on a (N, H, W, C) map is a 1x1 conv: pointwise)
            elif outs and x is not None and x.ndim == 4 and (outs[0].ndim < 4 or (outs[0].shape[-2:] == (1, 1) and x.shape[-2:] != (1, 1))):
                value = (GLOBAL, None)  # flatten / view / mean over space collapse the spatial grid
        for t in outs:
            self.set(t, value)
        if name in LAYER_OPS and outs:
            self._row(name, args, kwargs, outs[0], value)
        return out

    def _row(self, op: str, args, kwargs, out: torch.Tensor, value: tuple) -> None:
        owner = self.stack[-1] if self.stack else ""
        module = self.modules.get(owner)
        is_leaf = module is not None and not any(True for _ in module.children())
        params = 0
        if is_leaf and id(module) not in self.counted:
            self.counted.add(id(module))
            params = sum(p.numel() for p in module.parameters(recurse=False))
        macs = 0
        if op.startswith("conv"):
            w = _arg(args, kwargs, 1, "weight", None)
            macs = out.numel() * w[0].numel()
        elif op == "linear":
            w = _arg(args, kwargs, 1, "weight", None)
            macs = out.numel() * w.shape[1]
        name = owner if is_leaf else (f"{owner}.{op}" if owner else op)
        self.rows.append({
            "name": name, "op": op, "part": self.part, "output_shape": list(out.shape[1:]), "parameters": params,
            "macs": int(macs), "receptive_field": value[0], "stride": value[1],
            "activation_bytes": int(out.numel() * out.element_size()),
            "_stack": tuple(self.stack),
        })

    def attribute_leftover_parameters(self) -> None:
        """Parameters a non-leaf module uses directly (e.g. ConvNeXt's layer scale) go to its last row."""
        for name, module in self.modules.items():
            own = sum(p.numel() for p in module.parameters(recurse=False))
            if own and id(module) not in self.counted:
                rows = [r for r in self.rows if name in r["_stack"]]
                if rows:
                    rows[-1]["parameters"] += own
                    self.counted.add(id(module))
        for r in self.rows:
            r.pop("_stack")


def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> dict:
    """Per-layer rows and totals for one (C, H, W) input (batch of 1, eval mode, no gradients)."""
    rec = _Recorder(model)
    def enter(module, inputs, name):
        rec.stack.append(name)

    def leave(module, inputs, output):
        rec.stack.pop()  # returns None: a forward hook's return value would replace the output

    hooks = []
    for mod, name in rec.names.items():
        hooks.append(mod.register_forward_pre_hook(lambda m, i, n=name: enter(m, i, n)))
        hooks.append(mod.register_forward_hook(leave))
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
        with torch.no_grad(), rec:
            rec.set(x, (1, 1))
            feats = model.forward_features(x)
            rec.part = "head"
            logits = model.forward_head(feats)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rec.attribute_leftover_parameters()
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "model": getattr(model, "cnnlab_name", type(model).__name__),
        "input_shape": list(input_shape),
        "layers": rec.rows,
        "features_shape": list(feats.shape[1:]),
        "output_shape": list(logits.shape[1:]),
        "total_parameters": int(params),
        "trainable_parameters": int(trainable),
        "parameter_bytes": int(sum(p.numel() * p.element_size() for p in model.parameters())),
        "total_macs": int(sum(r["macs"] for r in rec.rows)),
        "activation_bytes": int(sum(r["activation_bytes"] for r in rec.rows)),
        "weights": weights_origin(model),
        "normalization": getattr(model, "cnnlab_normalization", None),
    }


def weights_origin(model: nn.Module) -> str:
    """Where the model's starting weights came from, in words (a pretrained set and its sha256, or from scratch)."""
    info = getattr(model, "cnnlab_pretrained", None)
    if not info:
        return "trained from scratch (random initial weights)"
    return f"fine-tuned from {info.get('weights')} (sha256 {str(info.get('sha256'))[:12]}…, from {info.get('source')})"


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}" if suffix else f"{int(n)}{unit}"
        n /= 1000
    return f"{n:.3g}P{unit}"


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    e = min(int(math.log(n, 1024)), 3)
    return f"{n / 1024 ** e:.1f} {'BKMG'[e]}{'iB' if e else ''}"


def print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c, h, w = s["input_shape"]
    t = Table(title=f"{s['model']} on {h}x{w}x{c}")
    for col in ("layer", "op", "output (C,H,W)", "parameters", "MACs", "receptive field", "stride", "activations"):
        t.add_column(col, justify="left" if col in ("layer", "op") else "right")
    for r in s["layers"]:
        rf = "global" if r["receptive_field"] == GLOBAL else f"{r['receptive_field']}x{r['receptive_field']}"
        t.add_row(r["name"], r["op"], "x".join(map(str, r["output_shape"])), f"{r['parameters']:,}" if r["parameters"] else "",
                  _human(r["macs"]) if r["macs"] else "", rf, "" if r["stride"] is None else str(r["stride"]), _bytes(r["activation_bytes"]))
    Console(width=120).print(t)
    print(f"total parameters: {s['total_parameters']:,} ({_bytes(s['parameter_bytes'])}), trainable {s['trainable_parameters']:,}")
    print(f"multiply-accumulates per image: {s['total_macs']:,} ({_human(s['total_macs'])})")
    print(f"activation memory per image (forward, batch 1): {_bytes(s['activation_bytes'])}")
    print(f"features {'x'.join(map(str, s['features_shape']))} -> output {'x'.join(map(str, s['output_shape']))}")
    print(f"weights: {s['weights']}")
    if s.get("normalization"):
        n = s["normalization"]
        print(f"input: pixels x {n['scale']:.6g}, minus mean {[round(v, 4) for v in n['mean']]}, divided by std {[round(v, 4) for v in n['std']]}")
