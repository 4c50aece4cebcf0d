"""Batch augmentation: shapes, labels, seeding, presets, mixup targets, and `show --augmented`."""

from __future__ import annotations

import pytest
import torch

from cnnlab.data.augment import PRESETS, Augmenter, batch_generator, resolve_ops, soft_targets
from cnnlab.errors import ConfigError


def batch(n=8, c=3, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, c, size, size, generator=g), torch.arange(n) % 3


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_presets_keep_shape_range_and_labels(preset, channels):
    x, y = batch(c=channels)
    out, y2, lam = Augmenter(resolve_ops(preset))(x, y, batch_generator(0, 1, 0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert 0 <= lam <= 1
    if y2 is not None:
        assert sorted(y2.tolist()) == sorted(y.tolist())  # partners come from the same batch


def test_same_seed_same_batch_different_step_different_batch():
    x, y = batch()
    aug = Augmenter(resolve_ops("strong"))
    a = aug(x, y, batch_generator(3, 2, 5))[0]
    b = aug(x, y, batch_generator(3, 2, 5))[0]
    c = aug(x, y, batch_generator(3, 2, 6))[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_none_is_identity_and_flip_alone_is_an_exact_mirror():
    x, y = batch()
    assert torch.equal(Augmenter(resolve_ops("none"))(x, y, batch_generator(0, 1, 0))[0], x)
    out = Augmenter(resolve_ops("none", {"hflip": 1.0}))(x, y, batch_generator(0, 1, 0))[0]
    assert torch.equal(out, x.flip(3))


def test_geometric_warp_moves_pixels_but_keeps_content_scale():
    x, y = batch()
    out = Augmenter(resolve_ops("none", {"rotate": 30, "translate": 0.2}))(x, y, batch_generator(0, 1, 0))[0]
    assert not torch.allclose(out, x)
    assert abs(float(out.mean()) - float(x.mean())) < 0.05


@pytest.mark.parametrize("op", ["mixup", "cutmix"])
def test_mixed_targets_sum_to_one_and_weight_the_partner(op):
    x, y = batch()
    out, y2, lam = Augmenter(resolve_ops("none", {op: 1.0}))(x, y, batch_generator(1, 1, 0))
    assert y2 is not None and 0 <= lam <= 1
    t = soft_targets(y, 3, y2, lam, smoothing=0.1)
    assert torch.allclose(t.sum(1), torch.ones(len(y)))
    same = y == y2
    assert torch.allclose(t[~same, y[~same]], torch.full(((~same).sum(),), lam * 0.9 + 0.1 / 3))


def test_erase_paints_grey_rectangles():
    x = torch.zeros(16, 3, 32, 32)
    out = Augmenter(resolve_ops("none", {"erase": 1.0}))(x, torch.zeros(16, dtype=torch.long), batch_generator(0, 1, 0))[0]
    erased = (out == 0.5).all(1).flatten(1).float().mean(1)
    assert (erased > 0.01).all() and (erased < 0.3).all()


def test_bad_names_and_values_are_config_errors():
    with pytest.raises(ConfigError, match="unknown augmentation 'heavy'"):
        resolve_ops("heavy")
    with pytest.raises(ConfigError, match="unknown augmentation op 'blur'"):
        resolve_ops("light", {"blur": 1})
    with pytest.raises(ConfigError, match="probability"):
        resolve_ops("light", {"hflip": 2})
    with pytest.raises(ConfigError, match="crop_scale"):
        resolve_ops("light", {"crop_scale": 0})


def test_show_augmented_saves_a_grid(cli, tmp_path):
    out = tmp_path / "aug.png"
    r = cli("show", "--data", "builtin:shapes", "--augmented", "--aug", "strong", "--grid", "8", "--out", out)
    assert r.code == 0, r
    assert out.stat().st_size > 1000
    r = cli("show", "--data", "builtin:shapes", "--augmented", "--aug", "wild")
    assert r.code == 2 and "wild" in r.err


def test_show_augmented_crops_to_the_training_size_like_train_size_does(cli, tmp_path, monkeypatch):
    from cnnlab.insight import plots

    shown = []
    monkeypatch.setattr(plots, "save_grid", lambda x, titles, path, suptitle="": shown.append(x.shape) or path)
    assert cli("show", "--data", "builtin:shapes", "--image-size", "40", "--augmented", "--grid", "4", "--train-size", "24").code == 0
    assert cli("show", "--data", "builtin:shapes", "--image-size", "40", "--augmented", "--grid", "4").code == 0
    assert shown == [(4, 24, 24, 3), (4, 40, 40, 3)]
    r = cli("show", "--data", "builtin:shapes", "--augmented", "--train-size", "4")
    assert r.code == 2 and "--train-size 4" in r.err and ">= 8" in r.err
    r = cli("show", "--data", "builtin:shapes", "--train-size", "24")
    assert r.code == 2 and "only shown with --augmented" in r.err


def test_boxes_are_clipped_at_the_border_never_larger_than_asked():
    from cnnlab.data.augment import _boxes

    area = torch.full((200,), 0.5)
    frac = _boxes(200, 32, 32, area, torch.Generator().manual_seed(0)).float().mean((1, 2))
    assert (frac <= 0.5 + 0.05).all() and (frac > 0.1).all()
    assert frac.mean() < 0.45  # boxes near an edge lose their outside part
