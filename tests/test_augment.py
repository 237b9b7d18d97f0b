"""RandAugment in plain torch (sdsnn/data/augment.py): ops against PIL, geometry, randomness,
and the loader end to end on a small registered CIFAR-like dataset (runs without real data).

PIL is the reference here only (the library does not use it). Images are random uint8 arrays
turned into floats v / 255, as the loader does; PIL's results are compared on the 0..255 scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from sdsnn.config import DataConfig, load_config
from sdsnn.data import DATASETS, build_loaders, register_dataset
from sdsnn.data import augment as A
from sdsnn.data.images import ImageDataset
from sdsnn.data.loaders import random_crop_flip as loaders_random_crop_flip
from sdsnn.errors import ConfigError

OPS = A.RANDAUGMENT_OPS
CIFAR10_YAML = Path(__file__).resolve().parents[1] / "configs" / "cifar10.yaml"


def _images(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3] with awkward cases: a narrow range, a flat channel, a channel
    of two values, a dark image (so no op is checked on uniform noise alone)."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    imgs[1] = imgs[1] // 4 + 60
    imgs[2, :, :, 0] = 7
    imgs[2, :, :, 1] = np.where(rng.random((size, size)) < 0.9, 100, 180)
    imgs[3] = imgs[3] // 8
    return imgs


def _float(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0


def _pil(imgs: np.ndarray, fn) -> torch.Tensor:
    """PIL's result of ``fn`` per image, on the 0..255 scale, as [n, 3, H, W] float."""
    out = np.stack([np.asarray(fn(Image.fromarray(a))) for a in imgs])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float()


def _err255(ours: torch.Tensor, ref255: torch.Tensor) -> float:
    return float((ours * 255.0 - ref255).abs().max())


# ----------------------------------------------------------------------------- ops against PIL
def test_equalize_matches_pil_exactly():
    imgs = _images()
    assert _err255(A.equalize(_float(imgs)), _pil(imgs, ImageOps.equalize)) < 1e-3
    # and it does something: a dark image is spread over the whole range
    assert float(A.equalize(_float(imgs))[3].max()) == 1.0 and imgs[3].max() < 40


def test_autocontrast_matches_pil_within_one_level():
    # PIL truncates (v - lo) * 255 / (hi - lo) to an integer; on floats there is nothing to round
    imgs = _images()
    x = _float(imgs)
    assert _err255(A.autocontrast(x), _pil(imgs, ImageOps.autocontrast)) <= 1.0 + 1e-3
    out = A.autocontrast(x)
    assert torch.equal(out[2, 0], x[2, 0])  # a flat channel is left as it is
    assert float(out[1].amin()) == 0.0 and float(out[1].amax()) == 1.0


@pytest.mark.parametrize("bits", [1, 4, 6, 7, 8])
def test_posterize_matches_pil_exactly(bits):
    imgs = _images()
    assert _err255(A.posterize(_float(imgs), bits), _pil(imgs, lambda im: ImageOps.posterize(im, bits))) < 1e-3


def test_solarize_matches_pil_at_every_magnitude():
    # RandAugment's thresholds linspace(1, 0, 31) on the [0, 1] scale; PIL inverts v >= its
    # integer threshold, i.e. the smallest v with v / 255 >= t
    imgs = _images()
    x = _float(imgs)
    for m in range(31):
        t = A.randaugment_magnitudes(m, 31, 32, 32)["Solarize"][0]
        k = int(np.ceil(255 * t - 1e-4))
        ref = _pil(imgs, lambda im: ImageOps.solarize(im, k))
        assert _err255(A.solarize(x, t), ref) < 1e-3, (m, t, k)


@pytest.mark.parametrize("name", ["Brightness", "Color", "Contrast", "Sharpness"])
def test_blend_ops_match_pil_within_two_levels(name):
    # PIL works on integers: its degenerate images are rounded (grayscale L, the image mean, the
    # SMOOTH filter) and Image.blend truncates the result. The error of the rounded degenerate
    # image, scaled by |1 - factor| <= 0.9, plus the truncation stay below 2 levels.
    fn = {"Brightness": A.brightness, "Color": A.color, "Contrast": A.contrast, "Sharpness": A.sharpness}[name]
    imgs = _images()
    x = _float(imgs)
    for factor in (0.1, 0.73, 1.27, 1.9):
        ref = _pil(imgs, lambda im: getattr(ImageEnhance, name)(im).enhance(factor))
        assert _err255(fn(x, factor), ref) < 2.0, factor
        assert _err255(fn(x, factor), _pil(imgs, lambda im: im)) > 5.0  # the op changes the image


# ----------------------------------------------------------------------------- geometry
def test_rotate_90_is_rot90_counter_clockwise():
    x = _float(_images(size=16))
    assert torch.equal(A.rotate(x, 90.0), torch.rot90(x, 1, (-2, -1)))
    assert torch.equal(A.rotate(x, -90.0), torch.rot90(x, -1, (-2, -1)))
    assert torch.equal(A.rotate(x, 0.0), x)


def test_rotate_matches_pil_about_the_centre():
    # PIL's Image.rotate turns counter-clockwise about (W/2, H/2) and samples the pixel whose
    # square holds the point; nearest sampling rounds, so only points within float error of a
    # pixel border may differ
    imgs = _images(size=16)
    x = _float(imgs)
    for deg in (17.0, -23.0, 30.0):
        ref = _pil(imgs, lambda im: im.rotate(deg, resample=Image.NEAREST)) / 255.0
        differ = (A.rotate(x, deg) != ref).any(1).float().mean()
        assert float(differ) < 0.02, deg


def test_translate_is_an_integer_shift_with_zero_fill():
    x = _float(_images(size=16)) + 0.01  # no zeros inside, so the fill is visible
    want = torch.zeros_like(x)
    want[..., 3:] = x[..., :-3]
    assert torch.equal(A.translate_x(x, 3.7), want)  # int(3.7) == 3 pixels, to the right
    want = torch.zeros_like(x)
    want[..., :-2, :] = x[..., 2:, :]
    assert torch.equal(A.translate_y(x, -2.2), want)  # int(-2.2) == -2: up
    # per-image amounts
    out = A.translate_x(x[:2], torch.tensor([1.0, -1.0]))
    assert torch.equal(out[0, :, :, 1:], x[0, :, :, :-1]) and torch.equal(out[1, :, :, :-1], x[1, :, :, 1:])


def test_shear_matches_autoaugments_pil_affine_and_zero_is_identity():
    # AutoAugment's PIL code: img.transform(size, AFFINE, (1, m, 0, 0, 1, 0)), i.e. about the
    # top-left corner, as torchvision's ShearX with center=[0, 0]
    imgs = _images(size=16)
    x = _float(imgs)
    assert torch.equal(A.shear_x(x, 0.0), x) and torch.equal(A.shear_y(x, 0.0), x)
    for m in (0.27, -0.13):
        ref_x = _pil(imgs, lambda im: im.transform(im.size, Image.AFFINE, (1, m, 0, 0, 1, 0), resample=Image.NEAREST))
        ref_y = _pil(imgs, lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0, m, 1, 0), resample=Image.NEAREST))
        assert _err255(A.shear_x(x, m), ref_x) < 1e-3
        assert _err255(A.shear_y(x, m), ref_y) < 1e-3
        assert _err255(A.shear_x(x, m), _pil(imgs, lambda im: im)) > 5.0


def test_magnitude_zero_is_identity_for_geometric_and_blend_ops():
    x = _float(_images(size=16))
    table = A.randaugment_magnitudes(0, 31, 16, 16)
    neutral = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
               "Brightness", "Color", "Contrast", "Sharpness")
    for op in neutral[1:]:
        value, signed = table[op]
        assert signed and value == 0.0
        for sign in (1.0, -1.0):
            assert torch.equal(A.apply_op(x, op, sign * value), x), op
    # through rand_augment: the images that drew one of those ops come out unchanged (the 8-bit
    # ops still act at magnitude 0: Equalize, Solarize at threshold 1, AutoContrast)
    x = _float(_images(n=40, size=16))
    out = A.rand_augment(x, torch.Generator().manual_seed(5), 1, 0)
    ops = torch.randint(len(OPS), (1, 40), generator=torch.Generator().manual_seed(5))[0]
    kept = torch.tensor([OPS[int(k)] in neutral for k in ops])
    same = torch.tensor([torch.equal(a, b) for a, b in zip(out, x)])
    assert 0 < int(kept.sum()) < 40 and bool(same[kept].all()) and not bool(same.all())
    # and not at magnitude 9 (the table drives apply_op)
    table9 = A.randaugment_magnitudes(9, 31, 16, 16)
    assert not torch.equal(A.apply_op(x, "Rotate", table9["Rotate"][0]), x)


def test_magnitude_table_is_torchvisions():
    t = A.randaugment_magnitudes(9, 31, 32, 32)
    assert t["ShearX"] == (pytest.approx(0.09), True) and t["Rotate"] == (pytest.approx(9.0), True)
    assert t["TranslateX"][0] == pytest.approx(150 / 331 * 32 * 0.3, rel=1e-6)  # 4.35: 4 pixels
    assert t["Brightness"][0] == pytest.approx(0.27) and t["Sharpness"][1]
    assert t["Posterize"] == (7.0, False) and t["Solarize"] == (pytest.approx(0.7), False)
    assert A.randaugment_magnitudes(30, 31, 32, 32)["Posterize"][0] == 4.0
    assert A.randaugment_magnitudes(0, 31, 32, 32)["Posterize"][0] == 8.0
    with pytest.raises(ValueError):
        A.randaugment_magnitudes(31, 31, 32, 32)


# ----------------------------------------------------------------------------- RandAugment
def _ra(x, seed, n=2, m=9):
    return A.rand_augment(x, torch.Generator().manual_seed(seed), n, m)


def test_rand_augment_is_seeded_in_range_and_leaves_the_input():
    x = _float(_images(n=24))
    before = x.clone()
    a, b, c = _ra(x, 1), _ra(x, 1), _ra(x, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before) and not torch.equal(a, x)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(A.rand_augment(x, torch.Generator().manual_seed(1), 0, 9), x)  # 0 ops: off


def test_each_image_draws_its_own_ops_and_signs():
    x = _float(_images()[:1]).expand(40, -1, -1, -1).contiguous()
    out = _ra(x, 3)
    distinct = {bytes(o.numpy()) for o in out}
    assert len(distinct) > 10
    # replay the documented draw (ops [N, B], then signs) image by image with apply_op
    g = torch.Generator().manual_seed(3)
    ops = torch.randint(len(OPS), (2, 40), generator=g)
    neg = torch.randint(2, (2, 40), generator=g).bool()
    table = A.randaugment_magnitudes(9, 31, 32, 32)
    for i in range(40):
        y = x[i : i + 1]
        for slot in range(2):
            value, signed = table[OPS[int(ops[slot, i])]]
            y = A.apply_op(y, OPS[int(ops[slot, i])], -value if signed and neg[slot, i] else value)
        assert torch.allclose(out[i : i + 1], y, atol=1e-6), (i, OPS[int(ops[0, i])], OPS[int(ops[1, i])])


def test_random_crop_flip_still_importable_from_loaders():
    assert loaders_random_crop_flip is A.random_crop_flip


# ----------------------------------------------------------------------------- config and loader
def test_config_fields_and_cifar10_preset():
    d = DataConfig()
    assert d.randaugment_ops == 0 and d.randaugment_magnitude == 9
    for bad in ({"randaugment_ops": -1}, {"randaugment_magnitude": 31}, {"randaugment_magnitude": -1}):
        with pytest.raises(ValueError):
            DataConfig(**bad)
    cfg = load_config(CIFAR10_YAML)
    assert (cfg.data.augment, cfg.data.randaugment_ops, cfg.data.randaugment_magnitude) == (True, 2, 9)
    with pytest.raises(ConfigError, match="randaugment_magnitude"):
        load_config(CIFAR10_YAML, {"data.randaugment_magnitude": 40})


@pytest.fixture
def tiny_rgb(tmp_path):
    """A CIFAR-like augmentable dataset (16x16 RGB, mean/std normalised) under tmp_path."""

    @register_dataset("tiny_rgb")
    class TinyRGB(ImageDataset):
        folder = "TinyRGB"
        files = ("x.npy",)
        num_classes = 3
        input_shape = (3, 16, 16)
        mean = (0.5, 0.5, 0.5)
        std = (0.25, 0.25, 0.25)
        augmentable = True

        def read(self, folder, split):
            n = 60 if split == "train" else 20
            rng = np.random.default_rng(0 if split == "train" else 1)
            return rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8), np.arange(n) % 3

    (tmp_path / "TinyRGB").mkdir()
    (tmp_path / "TinyRGB" / "x.npy").write_bytes(b"")
    try:
        yield str(tmp_path)
    finally:
        DATASETS.pop("tiny_rgb", None)


def _all(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_loader_applies_randaugment_to_training_batches_only(tiny_rgb):
    base = DataConfig(dataset="tiny_rgb", data_root=tiny_rgb, time_steps=2, batch_size=8, eval_batch_size=8)
    off = build_loaders(base, seed=4)
    on = build_loaders(base.model_copy(update={"randaugment_ops": 2}), seed=4)
    again = build_loaders(base.model_copy(update={"randaugment_ops": 2, "num_workers": 2}), seed=4)
    assert on.train.randaugment_ops == 2 and on.val.randaugment_ops == 0 == on.test.randaugment_ops
    for b in (off, on, again):
        b.train.set_epoch(2)
    t_off, t_on = _all(off.train), _all(on.train)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(t_off, t_on))  # the same images, in the same order
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(t_off, t_on))  # every batch changes
    assert _same(t_on, _all(again.train))  # same seed and epoch: same batches (any threads)
    assert _same(t_on, _all(on.train))  # iterating again repeats the epoch
    on.train.set_epoch(3)
    assert not torch.equal(t_on[0][0], next(iter(on.train))[0])
    assert _same(_all(off.val), _all(on.val)) and _same(_all(off.test), _all(on.test))
    # on [0, 1] before normalisation: the normalised values stay within (0 - 0.5) / 0.25 .. 2
    x = torch.cat([xb for xb, _ in t_on], 1)
    assert float(x.min()) >= -2.0 - 1e-6 and float(x.max()) <= 2.0 + 1e-6
    # with crop + flip as well: a different batch again, still a function of (seed, epoch)
    both = [build_loaders(base.model_copy(update={"randaugment_ops": 2, "augment": True}), seed=4) for _ in range(2)]
    assert torch.equal(next(iter(both[0].train))[0], next(iter(both[1].train))[0])
    assert not torch.equal(next(iter(both[0].train))[0], next(iter(on.train))[0])


def test_randaugment_is_ignored_for_datasets_that_are_not_natural_images():
    cfg = DataConfig(dataset="digits", time_steps=1, batch_size=32, train_limit=200)
    plain, ra = build_loaders(cfg, seed=0), build_loaders(cfg.model_copy(update={"randaugment_ops": 3}), seed=0)
    assert ra.train.randaugment_ops == 0
    assert torch.equal(next(iter(plain.train))[0], next(iter(ra.train))[0])
