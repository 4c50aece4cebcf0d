"""RandAugment and TrivialAugmentWide (data/policies.py via data/augment.py): torchvision's op list and magnitude
bins, per-image ops within a batch, seeding per (seed, epoch, step), PIL as the oracle for the pixel ops,
correctness on normalised inputs, `show --augmented`, and the errors for bad names and arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from cnnlab.data import policies
from cnnlab.data.augment import PRESETS, Augmenter, batch_generator, resolve_ops
from cnnlab.errors import ConfigError

POLICIES = ("randaugment", "trivialaugment")
TF_LITE = {"scale": 1 / 255, "mean": [127 / 255] * 3, "std": [128 / 255] * 3}
IMAGENET = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def photos(n=8, c=3, h=32, w=40, seed=0) -> torch.Tensor:
    """Images with 8-bit values, as training batches hold them (smooth gradients plus noise, not flat)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w) * torch.linspace(0.3, 1, h).view(1, 1, h, 1)
    x = 0.6 * ramp * torch.rand(n, c, 1, 1, generator=g) + 0.4 * torch.rand(n, c, h, w, generator=g)
    return (x * 255).round() / 255


def one_op(x: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    k = policies.OP_NAMES.index(name)
    return policies.apply_ops(x, torch.full((len(x),), k), torch.full((len(x),), float(magnitude)))


def test_the_op_list_and_magnitude_bins_are_torchvisions():
    assert policies.OP_NAMES == ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                                 "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
    col = {name: i for i, name in enumerate(policies.OP_NAMES)}
    ra = policies.magnitudes("randaugment", torch.tensor([0.0, 9.0, 30.0]), 331, 331)
    # RandAugment(M=9) of 31 bins: linspace(0, max, 31)[9]; translate 150/331 of the side, whole pixels; bits 8 - round(9/7.5)
    assert ra[1, col["shear_x"]] == pytest.approx(0.09) and ra[1, col["rotate"]] == pytest.approx(9.0)
    assert ra[1, col["brightness"]] == pytest.approx(0.27) and ra[1, col["solarize"]] == pytest.approx(0.3)
    assert ra[1, col["translate_x"]] == 45 and ra[2, col["translate_y"]] == 150
    assert ra[:, col["posterize"]].tolist() == [8, 7, 4]
    ta = policies.magnitudes("trivialaugment", torch.tensor([0.0, 15.0, 30.0]), 96, 96)
    assert ta[2, col["rotate"]] == pytest.approx(135.0) and ta[2, col["shear_y"]] == pytest.approx(0.99)
    assert ta[:, col["translate_x"]].tolist() == [0, 16, 32]  # TrivialAugmentWide: pixels, whatever the image size
    assert ta[:, col["posterize"]].tolist() == [8, 5, 2]
    assert (ra[:, [col["identity"], col["autocontrast"], col["equalize"]]] == 0).all()


@pytest.mark.parametrize("name", policies.OP_NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_at_every_strength_keeps_shape_dtype_and_range(name, channels):
    x = photos(c=channels)
    for policy in POLICIES:
        for b in (1.0, 15.0, 30.0):
            m = policies.magnitudes(policy, torch.tensor([b]), 32, 40)[0, policies.OP_NAMES.index(name)]
            for sign in (1, -1):
                out = one_op(x, name, float(m) * sign)
                assert out.shape == x.shape and out.dtype == x.dtype
                assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", ["identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                                  "contrast", "sharpness", "posterize"])
def test_magnitude_zero_is_the_identity(name):
    # (solarize at bin 0 still inverts pure white, as torchvision's threshold 1.0 does; autocontrast and equalize have no magnitude)
    x = photos()
    m = policies.magnitudes("randaugment", torch.tensor([0.0]), 32, 40)[0, policies.OP_NAMES.index(name)]
    assert torch.allclose(one_op(x, name, float(m)), x, atol=1e-5)


@pytest.mark.parametrize("name, m, pil", [
    ("equalize", 0, ImageOps.equalize),
    ("autocontrast", 0, ImageOps.autocontrast),
    ("posterize", 5, lambda im: ImageOps.posterize(im, 5)),
    ("solarize", 1 - 128 / 255, lambda im: ImageOps.solarize(im, 128)),
    ("brightness", 0.3, lambda im: ImageEnhance.Brightness(im).enhance(1.3)),
    ("color", -0.6, lambda im: ImageEnhance.Color(im).enhance(0.4)),
    ("contrast", 0.5, lambda im: ImageEnhance.Contrast(im).enhance(1.5)),
    ("sharpness", 0.8, lambda im: ImageEnhance.Sharpness(im).enhance(1.8)),
])
def test_pixel_ops_match_pil_on_8_bit_images(name, m, pil):
    """torchvision defines these ops as PIL's ImageOps / ImageEnhance; ours agree to one 8-bit step (rounding)."""
    x = photos(n=4, h=24, w=24)
    x[1] = (torch.floor(x[1] * 6) / 6 * 255).round() / 255  # few levels (8-bit ones): equalize's and posterize's edge cases
    imgs = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    ref = np.stack([np.asarray(pil(Image.fromarray(im))) for im in imgs]).astype(int)
    ours = (one_op(x, name, m) * 255).round().byte().permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(ours - ref).max() <= (0 if name in ("equalize", "posterize", "solarize") else 1)


def test_affine_ops_move_content_as_named():
    x = photos(n=2, h=32, w=32)
    moved = one_op(x, "translate_x", 5)
    assert torch.allclose(moved[..., 5:], x[..., :-5], atol=1e-5) and (moved[..., :5] == 0).all()  # black fill
    assert torch.allclose(one_op(x, "translate_y", -3)[..., :-3, :], x[..., 3:, :], atol=1e-5)
    turned = one_op(x, "rotate", 90)
    assert torch.allclose(turned, x.rot90(1, (2, 3)), atol=1e-4) or torch.allclose(turned, x.rot90(-1, (2, 3)), atol=1e-4)
    sheared = one_op(x, "shear_x", 0.3)  # about the top-left corner: the top row stays, the bottom one moves ~10 px
    assert (sheared[..., 0, 2:-2] - x[..., 0, 2:-2]).abs().max() < 0.2
    assert (sheared[..., -1, :] == 0).float().mean() > 0.25


@pytest.mark.parametrize("policy", POLICIES)
def test_seeded_per_seed_epoch_and_step(policy):
    x, y = photos(), torch.arange(8) % 2
    aug = Augmenter(resolve_ops(policy))
    a = aug(x, y, batch_generator(3, 2, 5))[0]
    assert torch.equal(a, aug(x, y, batch_generator(3, 2, 5))[0])
    for other in ((3, 2, 6), (3, 3, 5), (4, 2, 5)):
        assert not torch.equal(a, aug(x, y, batch_generator(*other))[0])


@pytest.mark.parametrize("ops", [{"n": 1, "m": 9}, {"trivialaugment": 1.0}])
def test_images_of_one_batch_get_different_ops(ops):
    """16 copies of one image come out in many different ways (a per-batch op would give at most two: one op, two signs)."""
    x = photos(n=1).expand(16, -1, -1, -1).contiguous()
    out = Augmenter(resolve_ops("none", ops))(x, torch.zeros(16, dtype=torch.long), batch_generator(0, 1, 0))[0]
    distinct = {tuple((v * 255).round().flatten()[::97].tolist()) for v in out}
    assert len(distinct) >= 6
    op, _ = policies.sample_round("randaugment", 64, 9, batch_generator(0, 1, 0), 32, 32)
    assert len(set(op.tolist())) >= 10  # all 14 ops are drawn, independently per image


def test_n_ops_per_image_and_probability_zero_switch_the_policy_off():
    x, y = photos(), torch.zeros(8, dtype=torch.long)
    assert not Augmenter(resolve_ops("none", {"trivialaugment": 0})).enabled
    assert torch.equal(Augmenter(resolve_ops("randaugment", {"n": 0, "hflip": 0, "translate": 0, "crop_scale": 1}))(x, y, batch_generator(0, 1, 0))[0], x)
    one = Augmenter(resolve_ops("none", {"n": 1, "m": 9}))(x, y, batch_generator(0, 1, 0))[0]
    three = Augmenter(resolve_ops("none", {"n": 3, "m": 9}))(x, y, batch_generator(0, 1, 0))[0]
    assert (three - x).abs().mean() > (one - x).abs().mean()  # more ops per image, further from the original
    assert resolve_ops("randaugment", {"n": 3, "m": 12})["m"] == 12


@pytest.mark.parametrize("preset", ["randaugment", "trivialaugment", "standard", "strong"])
@pytest.mark.parametrize("norm", [TF_LITE, IMAGENET], ids=["tf_lite", "imagenet"])
def test_normalised_inputs_are_augmented_as_their_pixels_would_be(preset, norm):
    """A pretrained model's batches arrive as (pixels - mean) / std: augmenting them and undoing the normalisation
    gives what augmenting the pixels gives (colour ops and the policies' black fill work on pixel values)."""
    x, y = photos(n=16), torch.arange(16) % 2
    mean, std = (torch.tensor(norm[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    ops = resolve_ops(preset)
    raw = Augmenter(ops)(x, y, batch_generator(1, 2, 3))[0]
    out = Augmenter(ops, norm=norm)((x - mean) / std, y, batch_generator(1, 2, 3))[0]
    back = out * std + mean
    assert out.min() < -0.5  # still normalised: nothing clamped it to [0, 1]
    close = (back - raw).abs() < 1e-4
    # posterize/solarize/equalize round to 8-bit steps: a value on a step's edge may land one step away
    assert close.float().mean() > 0.999 and (back - raw).abs().max() < 0.1


def test_policy_presets_replace_rotation_and_colour_jitter_of_standard():
    for policy in POLICIES:
        ops = resolve_ops(policy)
        std = resolve_ops("standard")
        assert all(ops[k] == std[k] for k in ("hflip", "translate", "crop_scale"))  # same flip, crop, shift
        assert ops["rotate"] == ops["brightness"] == ops["contrast"] == ops["saturation"] == 0
    assert (resolve_ops("randaugment")["n"], resolve_ops("randaugment")["m"]) == (2, 9)
    assert resolve_ops("trivialaugment")["trivialaugment"] == 1
    assert set(PRESETS) >= {"randaugment", "trivialaugment"}


@pytest.mark.parametrize("override, match", [
    ({"n": 2.5}, "n = 2.5 is RandAugment's number of ops"),
    ({"n": 11}, "whole number 0-10"),
    ({"m": 31}, "m = 31 is RandAugment's magnitude — expected a number 0-30"),
    ({"m": -1}, "expected a number >= 0"),
    ({"trivialaugment": 1.5}, "trivialaugment = 1.5 is a probability"),
])
def test_bad_policy_arguments_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve_ops("randaugment", override)


def test_magnitude_without_randaugment_is_an_error_not_ignored():
    with pytest.raises(ConfigError, match="m sets RandAugment's magnitude, which is off in 'standard'.*--aug-arg n=2"):
        resolve_ops("standard", {"m": 5})
    assert resolve_ops("standard", {"n": 1, "m": 5})["n"] == 1  # RandAugment on top of standard: allowed when asked


@pytest.mark.parametrize("policy", POLICIES)
def test_show_augmented_shows_the_policies(cli, tmp_path, monkeypatch, policy):
    from cnnlab.insight import plots

    shown = []
    monkeypatch.setattr(plots, "save_grid", lambda x, titles, path, suptitle="": shown.append((x.copy(), suptitle)) or path)
    args = ("show", "--data", "builtin:shapes", "--image-size", "48", "--augmented", "--grid", "8", "--seed", "1", "--aug", policy)
    assert cli(*args).code == 0
    assert cli("show", "--data", "builtin:shapes", "--image-size", "48", "--grid", "8", "--seed", "1").code == 0
    (aug, title), (plain, _) = shown
    assert title == f"augmented ({policy})" and aug.shape == plain.shape == (8, 48, 48, 3) and aug.dtype == np.uint8
    assert (aug != plain).any()
    r = cli(*args, "--aug-arg", "n=3", "--aug-arg", "m=12") if policy == "randaugment" else cli(*args, "--aug-arg", "trivialaugment=0.5")
    assert r.code == 0, r


def test_unknown_policy_and_bad_arguments_exit_2_with_one_line(cli, tmp_path):
    r = cli("show", "--data", "builtin:shapes", "--augmented", "--aug", "autoaugment")
    assert r.code == 2 and "autoaugment" in r.err and "randaugment" in r.err and "Traceback" not in r.err
    r = cli("show", "--data", "builtin:shapes", "--augmented", "--aug", "randaugment", "--aug-arg", "m=40")
    assert r.code == 2 and "m = 40" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("train", "--data", "builtin:shapes", "--model", "seed_cnn", "--aug", "trivialaugment", "--aug-arg", "m=5", "--epochs", "1",
            "--out", tmp_path / "run")
    assert r.code == 2 and "RandAugment" in r.err and len(r.err.strip().splitlines()) == 1
