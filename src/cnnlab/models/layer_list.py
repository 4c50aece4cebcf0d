"""Models from a layer list (YAML/JSON), like a Keras Sequential model: `cnnlab train --model-file my_cnn.yaml`.

    layers:
      - Conv2D: {filters: 32, kernel: 3}
      - BatchNorm: {}
      - ReLU: {}
      - MaxPool: {size: 2}
      - Residual: [{Conv2D: {filters: 32, kernel: 3}}, {BatchNorm: {}}, {ReLU: {}}]
      - GlobalAvgPool: {}
      - Dense: {units: 64}
      - ReLU: {}

The last layer must produce a flat vector; a final Dense to the class count is added automatically. The list
is stored as the `layers` argument of the registered `layer_list` model, so it travels in the model file
metadata and predict/explain/export rebuild the same network. Shape errors name the layer index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnlab.errors import first_line
from cnnlab.models._registry import register_model
from cnnlab.models.layers import head_outputs

DEFAULT_LAYERS = [
    {"Conv2D": {"filters": 16, "kernel": 3}}, {"BatchNorm": {}}, {"ReLU": {}}, {"MaxPool": {"size": 2}},
    {"Residual": [{"Conv2D": {"filters": 16, "kernel": 3}}, {"BatchNorm": {}}, {"ReLU": {}}]},
    {"Conv2D": {"filters": 32, "kernel": 3}}, {"BatchNorm": {}}, {"ReLU": {}}, {"GlobalAvgPool": {}},
]
LAYER_TYPES = ("Conv2D", "DepthwiseConv2D", "MaxPool", "AvgPool", "BatchNorm", "Dropout", "ReLU", "GELU", "SiLU",
               "Residual", "GlobalAvgPool", "Flatten", "Dense")


def _opts(where: str, opts: Any, allowed: dict[str, Any]) -> dict[str, Any]:
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise ValueError(f"{where}: options must be a mapping like {{filters: 32}}, not {opts!r}")
    unknown = [k for k in opts if k not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown option {unknown[0]!r} — valid: {', '.join(allowed) or 'none'}")
    out = {**allowed, **opts}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise ValueError(f"{where}: option {missing[0]!r} is required")
    return out


def _build(layers: Any, shape: tuple[int, ...], prefix: str) -> tuple[list[nn.Module], tuple[int, ...]]:
    """Build modules for `layers` given the input shape (C, H, W) or (F,); returns modules and the output shape."""
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{prefix or 'layers'}: expected a non-empty list of layers")
    mods: list[nn.Module] = []
    for i, item in enumerate(layers):
        where = f"layer {prefix}{i}"
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"{where}: expected one mapping like {{Conv2D: {{filters: 32}}}}, got {item!r}")
        (kind, opts), = item.items()
        if kind not in LAYER_TYPES:
            raise ValueError(f"{where}: unknown layer type {kind!r} — valid: {', '.join(LAYER_TYPES)}")
        spatial = len(shape) == 3
        if kind in ("Conv2D", "DepthwiseConv2D", "MaxPool", "AvgPool", "BatchNorm", "GlobalAvgPool", "Flatten", "Residual") and not spatial:
            raise ValueError(f"{where} ({kind}): needs a (C, H, W) feature map but gets a flat vector of {shape[0]}")
        if kind == "Dense" and spatial:
            raise ValueError(f"{where} (Dense): needs a flat vector but gets a {shape[0]}x{shape[1]}x{shape[2]} map — add GlobalAvgPool or Flatten first")
        if kind == "Residual":
            inner, out_shape = _build(opts, shape, f"{prefix}{i}.")
            if out_shape != shape:
                raise ValueError(f"{where} (Residual): block output {out_shape} differs from its input {shape} — keep filters and size equal")
            mods.append(_Residual(nn.Sequential(*inner)))
            continue
        if kind in ("Conv2D", "DepthwiseConv2D"):
            o = _opts(where, opts, {"filters": None if kind == "Conv2D" else shape[0], "kernel": 3, "stride": 1, "padding": "same"})
            pad = o["kernel"] // 2 if o["padding"] == "same" else 0
            groups = shape[0] if kind == "DepthwiseConv2D" else 1
            if kind == "DepthwiseConv2D" and o["filters"] % shape[0]:
                raise ValueError(f"{where} (DepthwiseConv2D): filters {o['filters']} must be a multiple of the {shape[0]} input channels")
            m = nn.Conv2d(shape[0], int(o["filters"]), int(o["kernel"]), int(o["stride"]), pad, groups=groups, bias=False)
        elif kind in ("MaxPool", "AvgPool"):
            o = _opts(where, opts, {"size": 2})
            m = (nn.MaxPool2d if kind == "MaxPool" else nn.AvgPool2d)(int(o["size"]))
        elif kind == "BatchNorm":
            _opts(where, opts, {})
            m = nn.BatchNorm2d(shape[0])
        elif kind == "Dropout":
            o = _opts(where, opts, {"rate": 0.5})
            m = nn.Dropout(float(o["rate"]))
        elif kind in ("ReLU", "GELU", "SiLU"):
            _opts(where, opts, {})
            m = {"ReLU": nn.ReLU, "GELU": nn.GELU, "SiLU": nn.SiLU}[kind]()
        elif kind == "GlobalAvgPool":
            _opts(where, opts, {})
            m = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        elif kind == "Flatten":
            _opts(where, opts, {})
            m = nn.Flatten()
        else:  # Dense
            o = _opts(where, opts, {"units": None})
            m = nn.Linear(shape[0], int(o["units"]))
        try:
            with torch.no_grad():
                out = m.eval()(torch.zeros(1, *shape))
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{where} ({kind}): cannot take input of shape {shape} ({first_line(e, 100)})") from None
        if out.numel() == 0:
            raise ValueError(f"{where} ({kind}): input of shape {shape} is too small — the output would be empty")
        m.train()
        mods.append(m)
        shape = tuple(out.shape[1:])
    return mods, shape


class _Residual(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class LayerListNet(nn.Module):
    def __init__(self, layers: list, num_classes: int, in_channels: int, image_size: tuple[int, int]):
        super().__init__()
        mods, shape = _build(layers, (in_channels, *image_size), "")
        if len(shape) != 1:
            raise ValueError(f"the last layer outputs a {'x'.join(map(str, shape))} map — end the list with GlobalAvgPool or Flatten (and Dense layers)")
        # split after the last spatial layer: Grad-CAM and summaries find the last feature map in forward_features
        cut = max((i for i, m in enumerate(mods) if isinstance(m, (nn.Sequential, nn.Flatten))), default=len(mods))
        self.features = nn.Sequential(*mods[:cut])
        self.head = nn.Sequential(*mods[cut:], nn.Linear(shape[0], head_outputs(num_classes)))
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def layer_list(num_classes: int = 2, in_channels: int = 3, image_size=(64, 64), layers: list | None = None) -> nn.Module:
    """A network from a YAML/JSON layer list (--model-file); the list travels in the model file."""
    return LayerListNet(layers if layers is not None else DEFAULT_LAYERS, num_classes, in_channels, tuple(image_size))


def read_model_file(path: str | Path) -> list:
    """The `layers` list of a YAML/JSON model file (JSON is YAML); errors name the file."""
    import yaml

    from cnnlab.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model file {str(p)!r} does not exist — pass a YAML/JSON file with a `layers:` list")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p.name}: not valid YAML/JSON ({first_line(e, 100)})") from None
    layers = data.get("layers") if isinstance(data, dict) else data
    if not isinstance(layers, list) or not layers:
        raise ConfigError(f"{p.name}: expected a `layers:` list (or a top-level list) of layers")
    return layers
