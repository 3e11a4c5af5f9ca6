"""U-Net shape arithmetic (no torch): valid inputs, context, errors, parameter count."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blockwise.config import UNetConfig, validate_mapping
from blockwise.errors import ConfigError, InputError
from blockwise.nn.architecture import (
    RAW_SCALE,
    RAW_SHIFT,
    context_vx,
    describe,
    final_crop_vx,
    is_valid_input,
    levels,
    normalize_raw,
    output_shape,
    output_step_vx,
    parameter_count,
    shape_plan,
    valid_input_shape,
)

REPO = Path(__file__).resolve().parents[2]

CONFIGS = {
    "default": UNetConfig(),
    "isotropic_3_levels": UNetConfig(downsample_factors=[(2, 2, 2)] * 3),
    "anisotropic": UNetConfig(downsample_factors=[(1, 3, 3)] * 3),
    "hybrid_1": UNetConfig(kind="hybrid", levels_2d=1, downsample_factors=[(1, 2, 2), (2, 2, 2)]),
    "hybrid_2_cremi": UNetConfig(
        kind="hybrid", levels_2d=2, downsample_factors=[(1, 3, 3), (1, 3, 3), (3, 3, 3)]
    ),
    "kernel_5_passes_3": UNetConfig(kernel_size=(5, 5, 5), num_conv_passes=3),
    "mixed": UNetConfig(
        kernel_size=(1, 5, 3), num_conv_passes=1, downsample_factors=[(3, 2, 1), (1, 2, 5)]
    ),
}


def reference_output(unet: UNetConfig, axis: int, size: int) -> int | None:
    """Slow per-axis reference: walk one axis down and up; None if the size is invalid.

    Written without the module's helpers: kernels and factors are read off the
    config directly, and the final crop is found by search (largest output that
    is a multiple of the pooling product and leaves an even, symmetric crop).
    """
    factors = [f[axis] for f in unet.downsample_factors]
    num_levels = len(factors) + 1
    kernels = []
    for level in range(num_levels):
        is_2d = unet.kind == "hybrid" and level < unet.levels_2d
        kernels.append(1 if (is_2d and axis == 0) else unet.kernel_size[axis])
    trim = [unet.num_conv_passes * (k - 1) for k in kernels]
    s = size
    for level in range(num_levels):
        s -= trim[level]
        if s < 1:
            return None
        if level < num_levels - 1:
            if s % factors[level]:
                return None
            s //= factors[level]
    for level in reversed(range(num_levels - 1)):
        s = s * factors[level] - trim[level]
        if s < 1:
            return None
    product = math.prod(factors)
    for out in range(s, 0, -1):
        if out % product == 0 and (s - out) % 2 == 0:
            return out
    return None


@pytest.mark.parametrize("name", CONFIGS)
def test_output_shape_matches_slow_reference_for_every_input_size(name: str) -> None:
    unet = CONFIGS[name]
    context = context_vx(unet)
    step = output_step_vx(unet)
    for axis in range(3):
        limit = 2 * context[axis] + 4 * step[axis] + 3
        for size in range(1, limit):
            shape = [2 * c + f for c, f in zip(context, step, strict=True)]
            shape[axis] = size
            expected = reference_output(unet, axis, size)
            assert is_valid_input(unet, shape) == (expected is not None), (axis, size)
            if expected is not None:
                assert output_shape(unet, shape)[axis] == expected


@pytest.mark.parametrize("name", CONFIGS)
def test_valid_inputs_are_twice_the_context_plus_multiples_of_the_step(name: str) -> None:
    unet = CONFIGS[name]
    context = context_vx(unet)
    step = output_step_vx(unet)
    for n in range(1, 6):
        shape = tuple(2 * c + n * f for c, f in zip(context, step, strict=True))
        out = output_shape(unet, shape)
        # the context is constant: (input - output) / 2 for every valid input
        assert out == tuple(n * f for f in step)
        assert tuple((i - o) // 2 for i, o in zip(shape, out, strict=True)) == context
        assert all((i - o) % 2 == 0 for i, o in zip(shape, out, strict=True))


@pytest.mark.parametrize("name", CONFIGS)
def test_skip_connections_and_final_crop_are_symmetric(name: str) -> None:
    unet = CONFIGS[name]
    plan = shape_plan(unet, valid_input_shape(unet, (40, 40, 40)))
    for shapes in plan.levels[:-1]:
        assert shapes.up_in is not None
        for down, up in zip(shapes.down_out, shapes.up_in, strict=True):
            assert down >= up and (down - up) % 2 == 0
    assert all(c % 2 == 0 for c in plan.final_crop)
    assert plan.final_crop == final_crop_vx(unet)
    assert all(c < 2 * f for c, f in zip(plan.final_crop, output_step_vx(unet), strict=True))


@pytest.mark.parametrize("name", CONFIGS)
def test_valid_input_shape_is_the_smallest_covering_input(name: str) -> None:
    unet = CONFIGS[name]
    step = output_step_vx(unet)
    context = context_vx(unet)
    for axis in range(3):
        for wanted in range(1, 3 * step[axis] + 2):
            request = [1, 1, 1]
            request[axis] = wanted
            got = valid_input_shape(unet, request)
            assert is_valid_input(unet, got)
            assert output_shape(unet, got)[axis] >= wanted
            # brute force: no smaller valid input along this axis covers the request
            for smaller in range(1, got[axis]):
                expected = reference_output(unet, axis, smaller)
                assert expected is None or expected < wanted
            assert got[axis] == 2 * context[axis] + step[axis] * math.ceil(wanted / step[axis])


def test_known_shapes_derived_by_hand() -> None:
    # default: per side 2 (bottom) + 2*2 (level 1 down, up) ... -> 20; 84 -> 44
    assert context_vx(UNetConfig()) == (20, 20, 20)
    assert output_shape(UNetConfig(), (84, 84, 84)) == (44, 44, 44)
    # MALA 3 levels of 2x2x2: 196 -(4)-> 192 /2 96 -4 92 /2 46 -4 42 /2 21 -4 17, up 34-4=30,
    # 60-4=56, 112-4=108, cropped to a multiple of 8 -> 104
    mala = CONFIGS["isotropic_3_levels"]
    assert output_shape(mala, (196, 196, 196)) == (104, 104, 104)
    assert final_crop_vx(mala) == (4, 4, 4)
    # anisotropic (1,3,3)x3 in y: up-path result 27 u - 52 = 2 (mod 27) -> crop 2
    aniso = CONFIGS["anisotropic"]
    assert final_crop_vx(aniso) == (0, 2, 2)
    assert output_step_vx(aniso) == (1, 27, 27)
    # an odd remainder needs one more step to keep the crop symmetric: (1,3,3) once,
    # kernel 3, one pass: y up-path result 3 u - 2 = 1 (mod 3) -> crop 1 + 3 = 4
    odd = UNetConfig(downsample_factors=[(1, 3, 3)], num_conv_passes=1)
    assert final_crop_vx(odd) == (0, 4, 4)


def test_levels_use_2d_kernels_in_the_upper_hybrid_levels() -> None:
    hybrid = CONFIGS["hybrid_2_cremi"]
    kernels = [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]
    assert [level.kernel for level in levels(hybrid)] == kernels
    assert [level.is_2d for level in levels(hybrid)] == [True, True, False, False]
    assert [level.fmaps for level in levels(hybrid)] == [12, 60, 300, 1500]
    assert [level.scale for level in levels(hybrid)] == [
        (1, 1, 1),
        (1, 3, 3),
        (1, 9, 9),
        (3, 27, 27),
    ]


def test_parameter_count_by_hand() -> None:
    unet = UNetConfig(num_fmaps=2, fmap_inc_factor=3, downsample_factors=[(1, 2, 2)])
    expected = (
        (1 * 2 * 27 + 2)  # level 0 down: 1 -> 2
        + (2 * 2 * 27 + 2)  # 2 -> 2
        + (2 * 6 * 27 + 6)  # level 1: 2 -> 6
        + (6 * 6 * 27 + 6)  # 6 -> 6
        + (6 * 2 * 4 + 2)  # transposed conv 6 -> 2, kernel 1x2x2
        + (4 * 2 * 27 + 2)  # level 0 up: 2 + 2 -> 2
        + (2 * 2 * 27 + 2)  # 2 -> 2
        + (2 * 3 + 3)  # head 2 -> 3 outputs
    )
    assert parameter_count(unet, 3) == expected == 1861
    hybrid = UNetConfig(
        kind="hybrid", levels_2d=1, num_fmaps=2, fmap_inc_factor=3, downsample_factors=[(1, 2, 2)]
    )
    # level 0's three convolutions have 1x3x3 kernels: 9 instead of 27 weights per pair
    assert parameter_count(hybrid, 3) == expected - 18 * (1 * 2 + 2 * 2 + 4 * 2 + 2 * 2)


def test_invalid_input_names_the_level_axis_and_nearest_valid_shapes() -> None:
    unet = UNetConfig()
    with pytest.raises(ConfigError) as e:
        output_shape(unet, (85, 84, 84))
    message = str(e.value)
    assert "[85, 84, 84]" in message
    assert "level 0" in message and "81 voxels along z" in message
    assert "downsample factor 2" in message
    assert "[84, 84, 84] and [88, 84, 84]" in message
    assert "(40 + 4n, 40 + 4n, 40 + 4n)" in message

    with pytest.raises(ConfigError, match=r"level 1 .* along y, which the downsample factor 2"):
        output_shape(unet, (84, 86, 84))


def test_too_small_input_names_the_smallest_valid_one() -> None:
    unet = UNetConfig()
    for shape in [(20, 44, 44), (40, 44, 44), (1, 1, 1)]:
        with pytest.raises(ConfigError, match="too small") as e:
            output_shape(unet, shape)
        assert "smallest valid input is [44, 44, 44]" in str(e.value)


@pytest.mark.parametrize(
    "shape", [(44, 44), (44, 44, 44, 44), (0, 44, 44), (44, -4, 44), (44.0, 44, 44)]
)
def test_malformed_shapes_are_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="three positive integers"):
        output_shape(UNetConfig(), shape)
    with pytest.raises(ConfigError, match="three positive integers"):
        valid_input_shape(UNetConfig(), shape)
    assert not is_valid_input(UNetConfig(), shape)


def test_describe_lists_levels_shapes_context_and_parameters() -> None:
    unet = CONFIGS["hybrid_2_cremi"]
    shape = valid_input_shape(unet, (20, 50, 50))
    text = describe(unet, shape, num_outputs=3)
    assert "hybrid: 2D convolutions in the upper 2 level(s)" in text
    assert "1x3x3 2D" in text and "3x3x3 3D" in text
    assert f"{parameter_count(unet, 3):,}" in text
    assert f"context per side {list(context_vx(unet))}" in text
    assert f"output {list(output_shape(unet, shape))}" in text
    assert len([line for line in text.splitlines() if line.lstrip()[:1].isdigit()]) == 4
    with pytest.raises(ConfigError, match="not a valid input"):
        describe(unet, (20, 50, 50))


def test_even_kernels_are_rejected_by_the_config() -> None:
    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        validate_mapping({"kernel_size": [3, 4, 3]}, UNetConfig)


def test_normalize_raw_maps_0_255_to_minus_1_1_like_gunpowder() -> None:
    raw = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    got = normalize_raw(raw)
    assert got.dtype == np.float32 and got.shape == raw.shape
    assert got[0, 0, 0] == -1.0 and got[-1, -1, -1] == 1.0
    np.testing.assert_allclose(got.ravel(), np.arange(256) / 255 * 2 - 1, atol=1e-6)
    # gunpowder's Normalize (factor 1/255) + IntensityScaleShift(2, -1), as its code does it
    gunpowder = raw.astype(np.float32) * (1.0 / 255) * 2 + -1
    assert gunpowder.dtype == np.float32
    np.testing.assert_array_equal(got, gunpowder)
    assert pytest.approx(1.0) == RAW_SCALE * 255 + RAW_SHIFT
    assert raw.dtype == np.uint8  # not modified in place


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int8])
def test_normalize_raw_rejects_other_dtypes(dtype: type) -> None:
    with pytest.raises(InputError, match=f"must be uint8.*got dtype {np.dtype(dtype)}"):
        normalize_raw(np.zeros((2, 2, 2), dtype=dtype))


def test_architecture_does_not_import_torch() -> None:
    code = (
        "import sys, blockwise.nn, blockwise.nn.architecture as a; "
        "from blockwise.config import UNetConfig; a.describe(UNetConfig(), (84, 84, 84)); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
