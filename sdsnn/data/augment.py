"""Batched image augmentation in plain torch: random crop + flip, and RandAugment.

Everything here works on a float batch ``[B, C, H, W]`` with values in [0, 1] and draws its
randomness only from the ``torch.Generator`` it is given, so the loader's per-batch seeding
(see :mod:`sdsnn.data.loaders`) makes the batches a function of (seed, epoch) alone. Loops run
over op kinds and op slots, never over images or pixels. torchvision is not used (it does not
import in this workplace); :func:`rand_augment` follows torchvision's ``RandAugment`` (v0.17+
defaults: 2 ops, magnitude 9 of 31 bins, nearest interpolation, fill 0) with the semantics its
tensor kernels give float images:

* geometric ops (ShearX/Y, TranslateX/Y, Rotate) sample with ``grid_sample(mode="nearest",
  padding_mode="zeros", align_corners=False)`` at the points torchvision's ``F.affine`` /
  ``F.rotate`` would: rotation about the image centre, counter-clockwise for a positive angle;
  shear about the top-left corner (``center=[0, 0]``, as AutoAugment's PIL code); translation by
  ``int(magnitude)`` pixels (truncated), positive to the right / down;
* Brightness, Color, Contrast, Sharpness blend with a degenerate image (black; the grayscale
  image 0.2989 R + 0.587 G + 0.114 B; the grayscale image's mean; the 3x3 smoothed image, border
  pixels kept) with factor ``1 + magnitude``, then clamp to [0, 1];
* Posterize and Equalize quantise to 0..255 as torchvision converts float to uint8
  (``int(x * 255.999)``), work on those integers as PIL does, and return ``value / 255``
  (torchvision's own float Posterize differs: v1 refuses float images, v2 computes
  ``floor(x * 2**bits) / 2**bits``; the PIL rule is that of the usual uint8 pipeline);
* Solarize inverts (``1 - x``) the values at or above the threshold (``linspace(1, 0)``);
* AutoContrast maps each channel's min to 0 and max to 1 (unchanged where max == min).
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

__all__ = [
    "random_crop_flip",
    "rand_augment",
    "RANDAUGMENT_OPS",
    "randaugment_magnitudes",
    "apply_op",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
]

Param = Union[float, torch.Tensor]  # one value for the whole batch, or one per image [B]

#: The op set of torchvision's RandAugment, in its order (each image draws N of them uniformly).
RANDAUGMENT_OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
    "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)


def random_crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-sample random crop of a zero-padded batch ``[B, C, H, W]`` and random horizontal flip."""
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=g, device=g.device).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=g, device=g.device).to(x.device)
    flip = torch.rand(B, generator=g, device=g.device).to(x.device) < 0.5
    rows = (oy[:, None] + torch.arange(H, device=x.device)[None, :])  # [B, H]
    cols = ox[:, None] + torch.arange(W, device=x.device)[None, :]  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(B, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- helpers
def _per_image(v: Param, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``v`` as a tensor ``[B]`` on ``x``'s device."""
    t = torch.as_tensor(v, dtype=dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def _warp(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at ``m @ (x, y, 1)`` for every output pixel, nearest, zeros outside.

    ``m`` ``[B, 2, 3]`` is torchvision's inverse affine matrix: pixel units, origin at the image
    centre, x to the right, y down, pixel (i, j) at (j + 0.5 - W/2, i + 0.5 - H/2). It is turned
    into ``affine_grid``'s normalised theta (align_corners=False puts pixel centres at the same
    points), so the sampling grid equals torchvision's ``_gen_affine_grid``.
    """
    B, C, H, W = x.shape
    to_theta = torch.tensor([[1.0, H / W, 2.0 / W], [W / H, 1.0, 2.0 / H]], dtype=m.dtype, device=m.device)
    theta = (m * to_theta).to(x.dtype)
    grid = F.affine_grid(theta, [B, C, H, W], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _geometric_matrices(kind: torch.Tensor, m: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse matrices ``[B, 2, 3]`` (see :func:`_warp`) of one geometric op per image:
    ``kind`` indexes :data:`_GEOMETRIC`, ``m`` is the op's signed magnitude (float64).

    As torchvision's ``_get_inverse_affine_matrix``: ShearX ``[[1, s, s*H/2], [0, 1, 0]]``
    (centre [0, 0], the top-left corner), ShearY ``[[1, 0, 0], [s, 1, s*W/2]]``, translation
    ``[[1, 0, -tx], [0, 1, -ty]]`` with ``int(m)`` pixels, rotation by ``r = radians(m)`` about the
    centre ``[[cos r, -sin r, 0], [sin r, cos r, 0]]`` (counter-clockwise on screen, y down). Only
    one op is non-zero per image, so their sum is that op's matrix.
    """
    zero = torch.zeros_like(m)
    sx = torch.where(kind == 0, m, zero)
    sy = torch.where(kind == 1, m, zero)
    tx = torch.where(kind == 2, torch.trunc(m), zero)
    ty = torch.where(kind == 3, torch.trunc(m), zero)
    r = torch.where(kind == 4, torch.deg2rad(m), zero)
    cos, sin = torch.cos(r), torch.sin(r)
    return torch.stack([cos, sx - sin, sx * (height / 2) - tx, sy + sin, cos, sy * (width / 2) - ty], 1).view(-1, 2, 3)


def _geometric(x: torch.Tensor, op: str, v: Param) -> torch.Tensor:
    m = _per_image(v, x, torch.float64)
    kind = torch.full(m.shape, _GEOMETRIC.index(op), device=x.device)
    return _warp(x, _geometric_matrices(kind, m, x.shape[2], x.shape[3]))


# ----------------------------------------------------------------------------- geometric ops
def shear_x(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Horizontal shear about the top-left corner: output (x, y) reads input (x + factor * y, y)
    (torchvision's ShearX: ``F.affine(shear=[degrees(atan(factor)), 0], center=[0, 0])``)."""
    return _geometric(x, "ShearX", factor)


def shear_y(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Vertical shear about the top-left corner: output (x, y) reads input (x, y + factor * x)."""
    return _geometric(x, "ShearY", factor)


def translate_x(x: torch.Tensor, pixels: Param) -> torch.Tensor:
    """Shift right by ``int(pixels)`` (truncated, as torchvision), zeros coming in."""
    return _geometric(x, "TranslateX", pixels)


def translate_y(x: torch.Tensor, pixels: Param) -> torch.Tensor:
    """Shift down by ``int(pixels)`` (truncated, as torchvision), zeros coming in."""
    return _geometric(x, "TranslateY", pixels)


def rotate(x: torch.Tensor, degrees: Param) -> torch.Tensor:
    """Rotate about the image centre, counter-clockwise for positive ``degrees`` (as
    ``torchvision.transforms.functional.rotate``; 90 degrees on a square image is ``torch.rot90``)."""
    return _geometric(x, "Rotate", degrees)


# ----------------------------------------------------------------------------- blends
def _blend(x: torch.Tensor, degenerate: Union[torch.Tensor, float], factor: Param) -> torch.Tensor:
    f = _per_image(factor, x, x.dtype).view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * degenerate).clamp_(0.0, 1.0)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]``: ITU-R 601-2 luma for RGB (torchvision's weights), the image if 1 channel,
    the channel mean otherwise."""
    if x.shape[1] == 3:
        return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return x.mean(1, keepdim=True)


def brightness(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Blend with black: ``clamp(factor * x)``."""
    return _blend(x, 0.0, factor)


def color(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Saturation: blend with the grayscale image (identity for 1-channel images, as torchvision)."""
    if x.shape[1] == 1:
        return x.clone()
    return _blend(x, _grayscale(x), factor)


def contrast(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Blend with the mean of the image's grayscale version (one value per image)."""
    return _blend(x, _grayscale(x).mean((1, 2, 3), keepdim=True), factor)


_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def sharpness(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Blend with the image smoothed by PIL's SMOOTH kernel (border pixels kept as they are)."""
    B, C, H, W = x.shape
    if H <= 2 or W <= 2:
        return x.clone()
    k = _SMOOTH.to(device=x.device, dtype=x.dtype).view(1, 1, 3, 3)
    smooth = F.conv2d(x.reshape(B * C, 1, H, W), k).view(B, C, H - 2, W - 2)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(x, degenerate, factor)


# ----------------------------------------------------------------------------- 8-bit ops
def _to_levels(x: torch.Tensor) -> torch.Tensor:
    """0..255 int64, as torchvision converts float images to uint8 (``int(x * 255.999)``)."""
    return (x.clamp(0.0, 1.0) * (256.0 - 1e-3)).to(torch.int64)


def posterize(x: torch.Tensor, bits: Param) -> torch.Tensor:
    """Keep the top ``bits`` (1..8) bits of each 8-bit value (PIL ``ImageOps.posterize``)."""
    b = _per_image(bits, x, torch.int64).view(-1, 1, 1, 1)
    mask = 256 - torch.bitwise_left_shift(torch.ones_like(b), 8 - b)
    return (_to_levels(x) & mask).to(x.dtype) / 255.0


def solarize(x: torch.Tensor, threshold: Param) -> torch.Tensor:
    """Invert (``1 - x``) the values at or above ``threshold`` (on the [0, 1] scale).

    The comparison allows 1e-6 so that a threshold of k/255 inverts the pixels of value k/255
    however both were rounded to float32 (PIL: values >= k inverted)."""
    t = _per_image(threshold, x, x.dtype).view(-1, 1, 1, 1)
    return torch.where(x >= t - 1e-6, 1.0 - x, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel: min -> 0, max -> 1 (linearly); channels with max == min unchanged."""
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), hi - lo)
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((x - lo) / scale).clamp_(0.0, 1.0)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel, PIL's rule (``ImageOps.equalize``), batched.

    On the 8-bit values: with ``n`` pixels, ``step = (n - count of the highest value present)
    // 255``; ``step == 0`` leaves the channel as it is, else value ``v`` becomes
    ``min(255, (count of values below v + step // 2) // step)``.
    """
    B, C, H, W = x.shape
    q = _to_levels(x).reshape(B * C, H * W)
    rows = B * C
    offsets = torch.arange(rows, device=x.device).mul_(256).unsqueeze(1)
    hist = torch.bincount((q + offsets).view(-1), minlength=rows * 256).view(rows, 256)
    levels = torch.arange(256, device=x.device)
    last = torch.where(hist > 0, levels, -1).amax(1, keepdim=True)  # highest value present
    step = (H * W - hist.gather(1, last)) // 255  # [rows, 1]
    below = hist.cumsum(1) - hist  # count of values below each level
    lut = ((below + step // 2) // step.clamp(min=1)).clamp_(max=255)
    lut = torch.where(step == 0, levels, lut)
    return lut.gather(1, q).view(B, C, H, W).to(x.dtype) / 255.0


# ----------------------------------------------------------------------------- RandAugment
def randaugment_magnitudes(magnitude: int, num_bins: int, height: int, width: int) -> dict[str, tuple[float, bool]]:
    """``{op: (value, signed)}`` at bin ``magnitude`` of ``num_bins``: torchvision's
    ``RandAugment._augmentation_space`` (Solarize on the [0, 1] scale, as its v2 kernels for float)."""
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude must be in 0..{num_bins - 1}, got {magnitude}")

    def lin(hi: float, lo: float = 0.0) -> float:
        return float(torch.linspace(lo, hi, num_bins)[magnitude].item())

    bits = int((8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int())[magnitude].item())
    return {
        "Identity": (0.0, False),
        "ShearX": (lin(0.3), True),
        "ShearY": (lin(0.3), True),
        "TranslateX": (lin(150.0 / 331.0 * width), True),
        "TranslateY": (lin(150.0 / 331.0 * height), True),
        "Rotate": (lin(30.0), True),
        "Brightness": (lin(0.9), True),
        "Color": (lin(0.9), True),
        "Contrast": (lin(0.9), True),
        "Sharpness": (lin(0.9), True),
        "Posterize": (float(bits), False),
        "Solarize": (float(torch.linspace(1.0, 0.0, num_bins)[magnitude].item()), False),
        "AutoContrast": (0.0, False),
        "Equalize": (0.0, False),
    }


# non-geometric op -> function of (images, signed magnitude per image [b] float64)
_APPLY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Brightness": lambda x, m: brightness(x, 1.0 + m),
    "Color": lambda x, m: color(x, 1.0 + m),
    "Contrast": lambda x, m: contrast(x, 1.0 + m),
    "Sharpness": lambda x, m: sharpness(x, 1.0 + m),
    "Posterize": lambda x, m: posterize(x, m.to(torch.int64)),
    "Solarize": solarize,
    "AutoContrast": lambda x, m: autocontrast(x),
    "Equalize": lambda x, m: equalize(x),
}


def apply_op(x: torch.Tensor, op: str, magnitude: Param) -> torch.Tensor:
    """One RandAugment op on every image of ``x``, as torchvision's ``_apply_op``: ``magnitude``
    (one value, or one per image) is the signed value of :func:`randaugment_magnitudes` (shear
    factor, pixels, degrees, ``factor - 1`` for the blends, bits, threshold; unused by Identity,
    AutoContrast, Equalize)."""
    if op not in RANDAUGMENT_OPS:
        raise ValueError(f"unknown RandAugment op {op!r}; one of {', '.join(RANDAUGMENT_OPS)}")
    if op == "Identity":
        return x.clone()
    if op in _GEOMETRIC:
        return _geometric(x, op, magnitude)
    return _APPLY[op](x, _per_image(magnitude, x, torch.float64))


def rand_augment(x: torch.Tensor, g: torch.Generator, num_ops: int = 2, magnitude: int = 9,
                 num_magnitude_bins: int = 31) -> torch.Tensor:
    """RandAugment on a float batch ``[B, C, H, W]`` in [0, 1]: each image applies ``num_ops``
    ops drawn uniformly (with replacement) from :data:`RANDAUGMENT_OPS`, in turn, each with the
    op's value at bin ``magnitude`` and, for signed ops, its own random sign.

    Returns a new tensor of the same shape and dtype with values in [0, 1]; ``x`` is not changed.
    All random numbers come from ``g``: the ops ``[num_ops, B]`` first, then the signs.
    """
    if num_ops <= 0:
        return x
    B, C, H, W = x.shape
    ops = torch.randint(len(RANDAUGMENT_OPS), (num_ops, B), generator=g, device=g.device)
    negative = torch.randint(2, (num_ops, B), generator=g, device=g.device).bool()
    table = randaugment_magnitudes(magnitude, num_magnitude_bins, H, W)
    ops, negative = ops.to(x.device), negative.to(x.device)
    geometric = torch.tensor([RANDAUGMENT_OPS.index(n) for n in _GEOMETRIC], device=x.device)
    values = torch.tensor([table[n][0] for n in RANDAUGMENT_OPS], dtype=torch.float64, device=x.device)
    signed = torch.tensor([table[n][1] for n in RANDAUGMENT_OPS], device=x.device)
    # signed magnitude of each (slot, image)'s op
    mags = torch.where(negative & signed[ops], -values[ops], values[ops])
    out = x.clone()
    for slot in range(num_ops):
        # the geometric ops of this slot: one grid_sample over all the images that drew one
        is_geo = (ops[slot, :, None] == geometric).any(1)
        idx = torch.nonzero(is_geo).squeeze(1)
        if idx.numel():
            kind = (ops[slot, idx, None] == geometric).to(torch.int64).argmax(1)
            m = _geometric_matrices(kind, mags[slot, idx], H, W)
            out.index_copy_(0, idx, _warp(out.index_select(0, idx), m))
        for name, fn in _APPLY.items():
            idx = torch.nonzero(ops[slot] == RANDAUGMENT_OPS.index(name)).squeeze(1)
            if idx.numel():
                out.index_copy_(0, idx, fn(out.index_select(0, idx), mags[slot, idx]).to(out.dtype))
    return out
