"""Shape arithmetic of the MALA U-Net, and the raw intensity convention (no torch).

The network (:class:`blockwise.nn.unet.UNet`) has ``L = len(downsample_factors)``
coarser levels below level 0. At level ``i`` it runs ``num_conv_passes`` valid
convolutions on the way down, max-pools by ``downsample_factors[i]``, and on
the way up upsamples the coarser result by the same factor, concatenates the
centre crop of the level's down-path features (the skip connection) and runs
``num_conv_passes`` valid convolutions again. Kernels are odd, so every valid
convolution trims the same number of voxels on both sides.

Translation equivariance. Max-pooling makes the result depend on where the
pooling windows fall: shifting the input by ``t`` voxels shifts the output by
``t`` only if ``t`` is a multiple of the product of all downsample factors,
``output_step_vx``. Block-wise prediction tiles the output with blocks side by
side, so the output shape itself must be a multiple of that step. The network
therefore centre-crops its last feature map to the largest multiple of the step
(the crop is even, hence symmetric; it is a constant of the architecture, at
most ``2 * step - 1`` voxels). As a result, per axis:

- the valid inputs are ``2 * context + n * step`` for ``n >= 1`` (exactly the
  inputs for which every level's feature map divides by its pooling factor),
- their outputs are ``n * step`` and the context per side is a constant, so a
  block whose input is its output grown by the context on each side gives the
  same values as one whole-volume pass, provided the blocks' outputs start at
  multiples of the step from the whole output's start.

Parameters are counted here from the layer shapes; a test checks the count
against the torch module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from blockwise.config import UNetConfig, Vec3
from blockwise.errors import ConfigError, InputError

AXES = ("z", "y", "x")

# Raw EM intensities (uint8) are fed to the network as ``raw * RAW_SCALE + RAW_SHIFT``
# in float32, which maps 0 -> -1 and 255 -> 1. Bit for bit this is gunpowder's
# Normalize (factor 1/255) followed by IntensityScaleShift(scale=2, shift=-1):
# multiplying by 2 is exact in floating point, and float32(2/255) = 2 * float32(1/255).
RAW_SCALE = 2.0 / 255.0
RAW_SHIFT = -1.0


def normalize_raw(raw: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Map raw EM intensities to the network's input range [-1, 1].

    Training and prediction both call this, so the network always sees the
    same values: ``raw * RAW_SCALE + RAW_SHIFT`` computed in float32
    (0 -> -1.0, 255 -> 1.0), the shape unchanged.

    Args:
        raw: intensities, any shape, dtype uint8.

    Returns:
        A new float32 array of the same shape.

    Raises:
        InputError: if ``raw`` is not uint8.
    """
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise InputError(
            f"raw intensities must be uint8 (0..255), got dtype {raw.dtype}; "
            "convert the raw volume to uint8 before training or prediction"
        )
    out = raw.astype(np.float32)
    out *= np.float32(RAW_SCALE)
    out += np.float32(RAW_SHIFT)
    return out


@dataclass(frozen=True)
class Level:
    """One resolution level of the U-Net.

    Attributes:
        index: 0 is full resolution; larger is coarser.
        fmaps: feature maps of the level's convolutions.
        kernel: convolution kernel (z, y, x); ``(1, k, k)`` on 2D levels.
        is_2d: whether the level convolves section by section (hybrid nets).
        factor: max-pooling factor to the next coarser level; None at the bottom.
        scale: size of one of this level's voxels in level-0 voxels (z, y, x).
    """

    index: int
    fmaps: int
    kernel: Vec3
    is_2d: bool
    factor: Vec3 | None
    scale: Vec3

    def shrink(self, num_conv_passes: int) -> Vec3:
        """Voxels (both sides together) that one pass of valid convolutions trims."""
        return _vec(num_conv_passes * (k - 1) for k in self.kernel)


@dataclass(frozen=True)
class LevelShapes:
    """Feature-map shapes (z, y, x) at one level for one input shape.

    Attributes:
        level: the level index.
        down_in: input of the down-path convolutions.
        down_out: after them; the skip connection is cropped from it and the
            next level is max-pooled from it.
        up_in: the coarser level's result upsampled to this level (the skip is
            centre-cropped to it); None at the bottom.
        up_out: after the up-path convolutions; None at the bottom.
    """

    level: int
    down_in: Vec3
    down_out: Vec3
    up_in: Vec3 | None
    up_out: Vec3 | None


@dataclass(frozen=True)
class ShapePlan:
    """Every shape the network goes through for one valid input shape.

    Attributes:
        input_shape: network input (z, y, x).
        levels: per-level shapes, level 0 first.
        final_crop: voxels (both sides together, even) cropped from level 0's
            up-path result to make the output a multiple of ``output_step_vx``.
        output_shape: network output (z, y, x).
    """

    input_shape: Vec3
    levels: tuple[LevelShapes, ...]
    final_crop: Vec3
    output_shape: Vec3


def _vec(values: Iterable[int]) -> Vec3:
    z, y, x = (int(v) for v in values)
    return (z, y, x)


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


def levels(unet: UNetConfig) -> list[Level]:
    """The U-Net's levels, level 0 (full resolution) first."""
    result = []
    scale = (1, 1, 1)
    num_levels = len(unet.downsample_factors) + 1
    for i in range(num_levels):
        is_2d = unet.kind == "hybrid" and i < unet.levels_2d
        kernel = (1, unet.kernel_size[1], unet.kernel_size[2]) if is_2d else unet.kernel_size
        factor = _vec(unet.downsample_factors[i]) if i < num_levels - 1 else None
        result.append(
            Level(
                index=i,
                fmaps=unet.num_fmaps * unet.fmap_inc_factor**i,
                kernel=_vec(kernel),
                is_2d=is_2d,
                factor=factor,
                scale=scale,
            )
        )
        if factor is not None:
            scale = _vec(s * f for s, f in zip(scale, factor, strict=True))
    return result


def output_step_vx(unet: UNetConfig) -> Vec3:
    """The product of all downsample factors (z, y, x).

    Valid outputs are multiples of it, and consecutive valid inputs differ by it;
    block outputs must start at multiples of it from the whole output's start.
    """
    step = [1, 1, 1]
    for factor in unet.downsample_factors:
        step = [s * f for s, f in zip(step, factor, strict=True)]
    return _vec(step)


def final_crop_vx(unet: UNetConfig) -> Vec3:
    """Voxels (both sides together, even) cropped from level 0's up-path result.

    The crop makes the output a multiple of :func:`output_step_vx`.

    Level 0's uncropped result is ``step * u_L - sum_i scale_i * shrink_i`` (sum
    over the levels above the bottom), so its remainder modulo the step is a
    constant of the architecture.
    """
    step = output_step_vx(unet)
    crop = []
    for axis in range(3):
        deficit = sum(
            level.scale[axis] * level.shrink(unet.num_conv_passes)[axis]
            for level in levels(unet)[:-1]
        )
        r = -deficit % step[axis]
        if r % 2:
            # only possible for an odd step (kernels are odd, so every shrink is
            # even): r + step is even and also leaves a multiple of the step
            r += step[axis]
        crop.append(r)
    return _vec(crop)


def context_vx(unet: UNetConfig) -> Vec3:
    """Voxels the network consumes on each side (z, y, x): (input - output) / 2.

    The same for every valid input shape; a block's read ROI is its write ROI
    grown by this on every side.
    """
    all_levels = levels(unet)
    passes = unet.num_conv_passes
    bottom = all_levels[-1].shrink(passes)
    context = [s // 2 for s in bottom]
    for level in reversed(all_levels[:-1]):
        assert level.factor is not None
        shrink = level.shrink(passes)
        # per side: half a down pass, the coarser level's context scaled up, half an up pass
        context = [s + f * c for s, f, c in zip(shrink, level.factor, context, strict=True)]
    crop = final_crop_vx(unet)
    return _vec(c + r // 2 for c, r in zip(context, crop, strict=True))


def _check_shape(shape: Sequence[int], what: str) -> Vec3:
    try:
        values = tuple(shape)
    except TypeError:
        raise ConfigError(
            f"{what} must be three positive integers (z, y, x), got {shape!r}"
        ) from None
    if len(values) != 3 or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise ConfigError(f"{what} must be three positive integers (z, y, x), got {list(values)}")
    return _vec(values)


def _nearest_valid(unet: UNetConfig, shape: Vec3) -> tuple[Vec3, Vec3]:
    """The nearest valid input shapes at or below and at or above ``shape`` per axis."""
    step = output_step_vx(unet)
    context = context_vx(unet)
    below, above = [], []
    for s, f, c in zip(shape, step, context, strict=True):
        smallest = 2 * c + f
        n_below = max(1, (s - 2 * c) // f)
        n_above = max(1, -(-(s - 2 * c) // f))
        below.append(max(smallest, 2 * c + n_below * f))
        above.append(max(smallest, 2 * c + n_above * f))
    return _vec(below), _vec(above)


def _smallest_text(unet: UNetConfig, shape: Vec3) -> str:
    smallest = valid_input_shape(unet, (1, 1, 1))
    _, above = _nearest_valid(unet, shape)
    return (
        f"The smallest valid input is {list(smallest)} (output {list(output_step_vx(unet))}); "
        f"the nearest valid one at or above the given shape is {list(above)}"
    )


def _valid_inputs_text(unet: UNetConfig) -> str:
    step = output_step_vx(unet)
    context = context_vx(unet)
    rule = ", ".join(f"{2 * c} + {f}n" for c, f in zip(context, step, strict=True))
    return f"Valid input shapes are (2 * context + n * step, n >= 1 per axis) = ({rule})"


def shape_plan(unet: UNetConfig, input_shape_vx: Sequence[int]) -> ShapePlan:
    """Follow an input shape through every level of the network.

    Raises:
        ConfigError: if the input shape is not valid: too small for the
            network, or some level's feature map does not divide by its
            pooling factor. The message names the level and axis and the
            nearest valid input shapes.
    """
    shape = _check_shape(input_shape_vx, "the network input shape")
    all_levels = levels(unet)
    passes = unet.num_conv_passes
    head = f"input shape {list(shape)} (z, y, x) is not a valid input of this U-Net"

    down_in: list[Vec3] = [shape]
    down_out: list[Vec3] = []
    for level in all_levels:
        shrink = level.shrink(passes)
        out = _vec(s - k for s, k in zip(down_in[-1], shrink, strict=True))
        resolution = (
            "full resolution"
            if level.index == 0
            else f"one voxel = {_fmt(level.scale)} input voxels"
        )
        where = (
            f"at level {level.index} ({resolution}) the feature map after {passes} "
            f"convolutions with kernel {_fmt(level.kernel)}"
        )
        if min(out) < 1:
            axis = int(np.argmin(out))
            raise ConfigError(
                f"{head}: it is too small; {where} would be {out[axis]} voxels along "
                f"{AXES[axis]}. {_smallest_text(unet, shape)}"
            )
        down_out.append(out)
        if level.factor is not None:
            for axis, (s, f) in enumerate(zip(out, level.factor, strict=True)):
                if s % f:
                    below, above = _nearest_valid(unet, shape)
                    raise ConfigError(
                        f"{head}: {where} is {s} voxels along {AXES[axis]}, which the "
                        f"downsample factor {f} does not divide. {_valid_inputs_text(unet)}; "
                        f"the nearest are {list(below)} and {list(above)}"
                    )
            down_in.append(_vec(s // f for s, f in zip(out, level.factor, strict=True)))

    up_in: list[Vec3 | None] = [None] * len(all_levels)
    up_out: list[Vec3 | None] = [None] * len(all_levels)
    current = down_out[-1]
    for level in reversed(all_levels[:-1]):
        assert level.factor is not None
        upsampled = _vec(u * f for u, f in zip(current, level.factor, strict=True))
        current = _vec(u - k for u, k in zip(upsampled, level.shrink(passes), strict=True))
        if min(current) < 1:
            axis = int(np.argmin(current))
            raise ConfigError(
                f"{head}: it is too small; on the way up, at level {level.index} the feature "
                f"map after {passes} convolutions with kernel {_fmt(level.kernel)} would be "
                f"{current[axis]} voxels along {AXES[axis]}. {_smallest_text(unet, shape)}"
            )
        up_in[level.index] = upsampled
        up_out[level.index] = current

    crop = final_crop_vx(unet)
    output = _vec(u - r for u, r in zip(current, crop, strict=True))
    if min(output) < 1:
        axis = int(np.argmin(output))
        raise ConfigError(
            f"{head}: it is too small; the output, cropped to a multiple of "
            f"{list(output_step_vx(unet))} for translation equivariance, would be "
            f"{output[axis]} voxels along {AXES[axis]}. {_smallest_text(unet, shape)}"
        )
    return ShapePlan(
        input_shape=shape,
        levels=tuple(
            LevelShapes(
                level=i,
                down_in=down_in[i],
                down_out=down_out[i],
                up_in=up_in[i],
                up_out=up_out[i],
            )
            for i in range(len(all_levels))
        ),
        final_crop=crop,
        output_shape=output,
    )


def output_shape(unet: UNetConfig, input_shape_vx: Sequence[int]) -> Vec3:
    """The network's output shape (z, y, x) for an input shape (voxels).

    Raises:
        ConfigError: if the input shape is not valid (see :func:`shape_plan`).
    """
    return shape_plan(unet, input_shape_vx).output_shape


def is_valid_input(unet: UNetConfig, input_shape_vx: Sequence[int]) -> bool:
    """Whether the network accepts this input shape (z, y, x)."""
    try:
        shape_plan(unet, input_shape_vx)
    except ConfigError:
        return False
    return True


def valid_input_shape(unet: UNetConfig, at_least_output_vx: Sequence[int]) -> Vec3:
    """The smallest valid input whose output covers ``at_least_output_vx``.

    Per axis the output is the smallest multiple of ``output_step_vx`` that is
    at least the requested size, and the input is that plus twice the context.

    Raises:
        ConfigError: if the requested output shape is not three positive integers.
    """
    wanted = _check_shape(at_least_output_vx, "the requested output shape")
    step = output_step_vx(unet)
    context = context_vx(unet)
    return _vec(2 * c + f * math.ceil(w / f) for w, f, c in zip(wanted, step, context, strict=True))


def _conv_parameters(in_channels: int, out_channels: int, kernel: Sequence[int]) -> int:
    return in_channels * out_channels * math.prod(kernel) + out_channels


def parameter_count(unet: UNetConfig, num_outputs: int) -> int:
    """Trainable parameters (weights and biases) of the network, from the layer shapes.

    Per level ``i`` with ``n_i`` feature maps: down convolutions (``in -> n_i``,
    then ``n_i -> n_i``), a transposed convolution ``n_(i+1) -> n_i`` with kernel
    and stride the pooling factor, up convolutions (``2 n_i -> n_i``, then
    ``n_i -> n_i``); and a final 1x1x1 convolution ``n_0 -> num_outputs``.
    """
    all_levels = levels(unet)
    total = 0
    for level in all_levels:
        n = level.fmaps
        previous = unet.in_channels if level.index == 0 else all_levels[level.index - 1].fmaps
        total += _conv_parameters(previous, n, level.kernel)
        total += (unet.num_conv_passes - 1) * _conv_parameters(n, n, level.kernel)
        if level.factor is not None:
            below = all_levels[level.index + 1].fmaps
            total += _conv_parameters(below, n, level.factor)
            total += _conv_parameters(2 * n, n, level.kernel)
            total += (unet.num_conv_passes - 1) * _conv_parameters(n, n, level.kernel)
    total += _conv_parameters(all_levels[0].fmaps, num_outputs, (1, 1, 1))
    return total


def describe(unet: UNetConfig, input_shape: Sequence[int], num_outputs: int = 3) -> str:
    """A text description of the network for ``blockwise plan``.

    Lists each level's voxel scale, feature maps, kernel (2D or 3D) and the
    feature-map shapes on the way down and up, then the input and output shapes,
    the context, the output step and the parameter count.

    Args:
        unet: the architecture.
        input_shape: network input (z, y, x), voxels.
        num_outputs: output channels (affinity offsets).

    Raises:
        ConfigError: if the input shape is not valid (see :func:`shape_plan`).
    """
    plan = shape_plan(unet, input_shape)
    all_levels = levels(unet)
    kind = (
        "3D"
        if unet.kind == "3d"
        else f"hybrid: 2D convolutions in the upper {unet.levels_2d} level(s), 3D below"
    )
    lines = [
        f"U-Net ({kind}), {len(all_levels)} levels, {unet.num_conv_passes} valid convolutions "
        f"(ReLU) per level and direction, max-pooling down, transposed convolutions up, "
        f"{unet.in_channels} input channel(s), {num_outputs} sigmoid outputs",
        f"{'level':>5}  {'voxel':>7}  {'fmaps':>6}  {'kernel':>9}  {'pool':>6}  "
        f"{'down: in -> out':>26}  {'up: in -> out':>26}",
    ]
    for level, shapes in zip(all_levels, plan.levels, strict=True):
        kernel = f"{_fmt(level.kernel)} {'2D' if level.is_2d else '3D'}"
        pool = _fmt(level.factor) if level.factor is not None else "-"
        down = f"{_fmt(shapes.down_in)} -> {_fmt(shapes.down_out)}"
        up = (
            f"{_fmt(shapes.up_in)} -> {_fmt(shapes.up_out)}"
            if shapes.up_in is not None and shapes.up_out is not None
            else "-"
        )
        lines.append(
            f"{level.index:>5}  {_fmt(level.scale):>7}  {level.fmaps:>6}  {kernel:>9}  "
            f"{pool:>6}  {down:>26}  {up:>26}"
        )
    voxels_in = math.prod(plan.input_shape)
    voxels_out = math.prod(plan.output_shape)
    lines += [
        f"input {list(plan.input_shape)} -> output {list(plan.output_shape)} (z, y, x voxels; "
        f"output/input {voxels_out / voxels_in:.1%})",
        f"context per side {list(context_vx(unet))} voxels; outputs are multiples of "
        f"{list(output_step_vx(unet))} (final crop {list(plan.final_crop)})",
        f"parameters {parameter_count(unet, num_outputs):,}",
    ]
    return "\n".join(lines)
