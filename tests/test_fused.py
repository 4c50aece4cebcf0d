"""The fused max-pool + ReLU kernel gives exactly torch's numbers (values, ties, NaN, gradients, odd sizes)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cnnlab.api import create_model
from cnnlab.models import fused

needs_kernel = pytest.mark.skipif(fused.library() is None, reason="no C compiler here: the torch fallback runs instead")


def _input(shape, dtype, nan=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).round()  # rounded: many ties inside the 2x2 windows
    if nan:
        x = x.masked_fill(torch.rand(shape, generator=g) < 0.05, float("nan"))
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 1, 2, 2), (3, 5, 6, 5), (2, 32, 47, 47), (4, 8, 3, 3)])
def test_matches_torch_values_and_gradients(shape, ceil_mode, dtype):
    x0 = _input(shape, dtype, nan=shape[2] == 7)
    assert fused.can_fuse(x0)
    xa, xb = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    ya = F.relu(F.max_pool2d(xa, 2, ceil_mode=ceil_mode))
    yb = fused.max_pool2_relu(xb, ceil_mode)
    assert yb.shape == ya.shape and yb.dtype == ya.dtype and yb.is_contiguous(memory_format=torch.channels_last)
    assert _same(ya, yb)
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    ya.backward(g)
    yb.backward(g)
    assert _same(xa.grad, xb.grad)


@needs_kernel
def test_inference_without_grad_and_threads():
    x = _input((8, 16, 30, 31), torch.float32)
    old = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            with torch.no_grad():
                assert torch.equal(fused.max_pool2_relu(x), F.relu(F.max_pool2d(x, 2)))
    finally:
        torch.set_num_threads(old)


def test_falls_back_to_torch_for_other_layouts_and_dtypes():
    for x in (_input((2, 4, 6, 6), torch.float32).contiguous(), _input((2, 4, 6, 6), torch.float64),
              _input((2, 4, 1, 6), torch.float32)):
        assert not fused.can_fuse(x)
        assert torch.equal(fused.max_pool2_relu(x, True), F.relu(F.max_pool2d(x, 2, ceil_mode=True)))


@pytest.mark.parametrize("name", ["seed_cnn", "resnet9", "vgg"])
def test_models_train_identically_with_and_without_the_kernel(name, monkeypatch):
    """One training step's outputs and gradients, fused vs torch ops (bf16 autocast, channels_last as in training)."""
    x = torch.rand(4, 3, 40, 40).contiguous(memory_format=torch.channels_last)
    results = []
    for use_kernel in (True, False):
        if not use_kernel:
            monkeypatch.setattr(fused, "can_fuse", lambda t: False)
        model = create_model(name, num_classes=3, in_channels=3, image_size=40, seed=0).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (oa, ga), (ob, gb) = results
    assert torch.equal(oa, ob)
    assert all(torch.equal(a, b) for a, b in zip(ga, gb))


def _run_python(code: str, **env) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_without_a_compiler_or_when_disabled_the_torch_ops_run(tmp_path):
    code = ("import torch; from cnnlab.models import fused; from cnnlab.api import create_model\n"
            "m = create_model('seed_cnn', num_classes=2, in_channels=3, image_size=32)\n"
            "y = m(torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))\n"
            "print(fused.library() is None, tuple(y.shape))")
    assert _run_python(code, CC="/bin/false", CNNLAB_CACHE=str(tmp_path)) == "True (2, 1)"
    assert not list((tmp_path / "kernels").glob("*.so"))
    assert _run_python(code, CNNLAB_FUSED="0") == "True (2, 1)"
