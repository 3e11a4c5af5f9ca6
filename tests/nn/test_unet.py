"""The torch U-Net: shapes and parameters equal the arithmetic; block-wise equals whole."""

from __future__ import annotations

import itertools

import pytest
import torch

from blockwise.config import UNetConfig
from blockwise.errors import ConfigError, InputError
from blockwise.nn.architecture import (
    context_vx,
    levels,
    output_shape,
    output_step_vx,
    parameter_count,
    valid_input_shape,
)
from blockwise.nn.unet import UNet, build_unet, num_parameters

SMALL = {"num_fmaps": 2, "fmap_inc_factor": 2}
CONFIGS = {
    "isotropic_2x2x2_twice": UNetConfig(**SMALL, downsample_factors=[(2, 2, 2)] * 2),
    # one conv pass keeps the (large) anisotropic context, and the test, small
    "anisotropic_1x3x3_thrice": UNetConfig(
        **SMALL, downsample_factors=[(1, 3, 3)] * 3, num_conv_passes=1
    ),
    "hybrid_levels_2d_1": UNetConfig(
        **SMALL, kind="hybrid", levels_2d=1, downsample_factors=[(1, 2, 2), (2, 2, 2)]
    ),
    "hybrid_levels_2d_2": UNetConfig(
        **SMALL, kind="hybrid", levels_2d=2, downsample_factors=[(1, 2, 2), (1, 2, 2)]
    ),
    "kernel_5": UNetConfig(**SMALL, kernel_size=(5, 5, 5), downsample_factors=[(2, 2, 2)]),
    "three_conv_passes": UNetConfig(**SMALL, num_conv_passes=3, downsample_factors=[(2, 2, 2)]),
    "two_input_channels": UNetConfig(**SMALL, in_channels=2, downsample_factors=[(1, 2, 2)]),
}


def seeded_model(unet: UNetConfig, num_outputs: int = 3, seed: int = 0) -> UNet:
    """A random-weight model whose activations neither vanish nor explode.

    He initialisation keeps the ReLU activations' scale through the layers, so
    the outputs vary strongly with the input and a misaligned block would show.
    """
    torch.manual_seed(seed)
    model = build_unet(unet, num_outputs)
    for parameter in model.parameters():
        if parameter.dim() > 1:
            torch.nn.init.kaiming_normal_(parameter, nonlinearity="relu")
        else:
            torch.nn.init.uniform_(parameter, -0.1, 0.1)
    return model.eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_output_shape_and_parameter_count_equal_the_arithmetic(name: str) -> None:
    unet = CONFIGS[name]
    model = seeded_model(unet)
    assert num_parameters(model) == parameter_count(unet, 3)
    smallest = valid_input_shape(unet, (1, 1, 1))
    step = output_step_vx(unet)
    # the smallest input, and one a step larger on one axis at a time
    shapes = [smallest] + [
        tuple(
            s + (f if a == axis else 0) for a, (s, f) in enumerate(zip(smallest, step, strict=True))
        )
        for axis in range(3)
    ]
    for shape in shapes:
        x = torch.rand(1, unet.in_channels, *shape)
        with torch.no_grad():
            y = model(x)
        assert tuple(y.shape) == (1, 3, *output_shape(unet, shape))
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("name", CONFIGS)
def test_hybrid_levels_really_convolve_in_2d(name: str) -> None:
    unet = CONFIGS[name]
    model = build_unet(unet, 3)
    kernels = {level.index: level.kernel for level in levels(unet)}
    for i, block in enumerate(model.down):
        for layer in block:
            if isinstance(layer, torch.nn.Conv3d):
                assert tuple(layer.kernel_size) == kernels[i]
    for i, block in enumerate(model.up):
        for layer in block:
            if isinstance(layer, torch.nn.Conv3d):
                assert tuple(layer.kernel_size) == kernels[i]
    if unet.kind == "hybrid":
        assert kernels[0][0] == 1 and kernels[len(kernels) - 1][0] == unet.kernel_size[0]


@pytest.mark.parametrize(
    "unet",
    [
        UNetConfig(),  # the demo network
        UNetConfig(downsample_factors=[(2, 2, 2)] * 3),  # MALA size
        UNetConfig(
            kind="hybrid", levels_2d=2, downsample_factors=[(1, 3, 3), (1, 3, 3), (3, 3, 3)]
        ),
    ],
    ids=["demo", "mala", "mala_hybrid"],
)
def test_parameter_count_of_full_size_networks(unet: UNetConfig) -> None:
    with torch.device("meta"):  # shapes only, no memory
        model = build_unet(unet, 3)
    assert num_parameters(model) == parameter_count(unet, 3)


def predict_blockwise(
    model: UNet, raw: torch.Tensor, block_output: tuple[int, int, int]
) -> torch.Tensor:
    """Stitch the output from blocks whose input is their output plus the context."""
    unet = model.config
    context = context_vx(unet)
    whole = tuple(s - 2 * c for s, c in zip(raw.shape[-3:], context, strict=True))
    result = torch.full((model.num_outputs, *whole), float("nan"))
    grid = [range(0, w, b) for w, b in zip(whole, block_output, strict=True)]
    for begin in itertools.product(*grid):
        out = tuple(slice(b, b + s) for b, s in zip(begin, block_output, strict=True))
        read = tuple(
            slice(b, b + s + 2 * c) for b, s, c in zip(begin, block_output, context, strict=True)
        )
        with torch.no_grad():
            result[(slice(None), *out)] = model(raw[(slice(None), slice(None), *read)])[0]
    assert not torch.isnan(result).any()
    return result


@pytest.mark.parametrize(
    ("unet", "whole_output", "block_output"),
    [
        (CONFIGS["isotropic_2x2x2_twice"], (8, 8, 12), (4, 8, 4)),
        # final crop (0, 2, 2): the output is cut to multiples of the step (1, 3, 3)
        (
            UNetConfig(**SMALL, kind="hybrid", levels_2d=1, downsample_factors=[(1, 3, 3)]),
            (5, 9, 12),
            (1, 3, 6),
        ),
        # kernel 5, three passes, anisotropic pooling
        (
            UNetConfig(
                **SMALL, kernel_size=(3, 5, 5), num_conv_passes=3, downsample_factors=[(1, 2, 2)]
            ),
            (4, 6, 4),
            (2, 2, 4),
        ),
    ],
    ids=["isotropic", "hybrid_with_final_crop", "kernel_5_passes_3"],
)
def test_blockwise_prediction_equals_whole_volume_prediction(
    unet: UNetConfig, whole_output: tuple[int, int, int], block_output: tuple[int, int, int]
) -> None:
    model = seeded_model(unet)
    input_shape = valid_input_shape(unet, whole_output)
    assert output_shape(unet, input_shape) == whole_output
    torch.manual_seed(1)
    raw = torch.rand(1, 1, *input_shape) * 2 - 1
    with torch.no_grad():
        whole = model(raw)[0]
    assert float(whole.std()) > 0.05  # the random network's output is far from constant
    blocks = predict_blockwise(model, raw, block_output)
    torch.testing.assert_close(blocks, whole, atol=1e-5, rtol=0)


def test_a_block_off_the_pooling_grid_differs() -> None:
    """Negative control: shifting a block by less than the pooling step changes its values.

    This is why block outputs must start at multiples of ``output_step_vx``.
    """
    unet = CONFIGS["isotropic_2x2x2_twice"]
    model = seeded_model(unet)
    context = context_vx(unet)
    input_shape = valid_input_shape(unet, (8, 8, 8))
    torch.manual_seed(1)
    raw = torch.rand(1, 1, *input_shape) * 2 - 1
    with torch.no_grad():
        whole = model(raw)[0]
        block_in = tuple(4 + 2 * c for c in context)
        aligned = model(raw[..., 4 : 4 + block_in[0], : block_in[1], : block_in[2]])[0]
        shifted = model(raw[..., 1 : 1 + block_in[0], : block_in[1], : block_in[2]])[0]
    torch.testing.assert_close(aligned, whole[:, 4:8, :4, :4], atol=1e-5, rtol=0)
    assert float((shifted - whole[:, 1:5, :4, :4]).abs().max()) > 1e-2


def test_invalid_input_shape_raises_a_config_error_naming_the_level() -> None:
    model = seeded_model(CONFIGS["isotropic_2x2x2_twice"])
    with pytest.raises(ConfigError, match=r"\[45, 44, 44\].*level 0.*41 voxels along z"):
        model(torch.zeros(1, 1, 45, 44, 44))
    with pytest.raises(ConfigError, match="too small"):
        model(torch.zeros(1, 1, 24, 24, 24))


def test_malformed_input_tensors_raise_input_errors() -> None:
    model = seeded_model(CONFIGS["isotropic_2x2x2_twice"])
    with pytest.raises(InputError, match=r"\(batch, 1, z, y, x\), got \(1, 44, 44, 44\)"):
        model(torch.zeros(1, 44, 44, 44))
    with pytest.raises(InputError, match=r"got \(1, 2, 44, 44, 44\)"):
        model(torch.zeros(1, 2, 44, 44, 44))
    with pytest.raises(InputError, match="floating-point"):
        model(torch.zeros(1, 1, 44, 44, 44, dtype=torch.uint8))


def test_num_outputs_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="num_outputs=0"):
        build_unet(UNetConfig(), 0)


def test_batches_are_independent_and_gradients_reach_every_parameter() -> None:
    unet = CONFIGS["hybrid_levels_2d_1"]
    model = seeded_model(unet).train()
    shape = valid_input_shape(unet, (2, 4, 4))
    torch.manual_seed(2)
    raw = torch.rand(2, 1, *shape)
    out = model(raw)
    with torch.no_grad():
        single = model(raw[1:])
    torch.testing.assert_close(out[1:], single, atol=1e-6, rtol=0)
    out.mean().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    torch.testing.assert_close(torch.sigmoid(model.logits(raw)), out)


def _delta(conv: torch.nn.Conv3d, in_channel: int) -> None:
    """Make ``conv`` copy ``in_channel`` at the kernel centre into output channel 0."""
    torch.nn.init.zeros_(conv.weight)
    assert conv.bias is not None
    torch.nn.init.zeros_(conv.bias)
    kz, ky, kx = conv.kernel_size
    with torch.no_grad():
        conv.weight[0, in_channel, kz // 2, ky // 2, kx // 2] = 1.0


def path_through_level(unet: UNetConfig, level: int) -> UNet:
    """A network whose output is the level's down-path result, upsampled by repetition.

    Convolutions copy channel 0 at their kernel centre; the up path of ``level``
    reads its skip connection, every level above it reads the upsampled channel,
    and transposed convolutions repeat each voxel (nearest-neighbour upsampling).
    """
    model = build_unet(unet, 1)
    for block in model.down:
        for layer in block:
            if isinstance(layer, torch.nn.Conv3d):
                _delta(layer, 0)
    for i, block in enumerate(model.up):
        convs = [layer for layer in block if isinstance(layer, torch.nn.Conv3d)]
        fmaps = convs[0].out_channels
        _delta(convs[0], 0 if i == level else fmaps)  # skip first, then upsampled
        for conv in convs[1:]:
            _delta(conv, 0)
    for transposed in model.upsample:
        conv = transposed[0]
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
        with torch.no_grad():
            conv.weight[0, 0] = 1.0
    _delta(model.head, 0)
    return model.eval()


def reference_through_level(
    unet: UNetConfig, raw: torch.Tensor, level: int, out_shape: tuple[int, int, int]
) -> torch.Tensor:
    """Output voxel p sees the level's feature voxel covering input voxel p + context.

    Follows the input coordinate of each level's first voxel (origin) and its
    size in input voxels (scale) instead of the network's crops.
    """
    x = raw[0, 0]
    origin = [0, 0, 0]
    scale = [1, 1, 1]
    for lv in levels(unet)[: level + 1]:
        trim = [unet.num_conv_passes * (k - 1) // 2 for k in lv.kernel]
        x = x[
            trim[0] : x.shape[0] - trim[0],
            trim[1] : x.shape[1] - trim[1],
            trim[2] : x.shape[2] - trim[2],
        ]
        origin = [o + t * s for o, t, s in zip(origin, trim, scale, strict=True)]
        if lv.index < level:
            assert lv.factor is not None
            x = torch.nn.functional.max_pool3d(x[None], lv.factor)[0]
            scale = [s * f for s, f in zip(scale, lv.factor, strict=True)]
    context = context_vx(unet)
    index = [
        (torch.arange(n) + c - o) // s
        for n, c, o, s in zip(out_shape, context, origin, scale, strict=True)
    ]
    for axis in range(3):
        assert int(index[axis].min()) >= 0 and int(index[axis].max()) < x.shape[axis]
    return x[index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]]


@pytest.mark.parametrize(
    "unet",
    [
        UNetConfig(**SMALL, kind="hybrid", levels_2d=1, downsample_factors=[(1, 3, 3), (2, 2, 2)]),
        UNetConfig(**SMALL, num_conv_passes=1, downsample_factors=[(1, 3, 3)]),
        UNetConfig(
            **SMALL, kernel_size=(5, 3, 3), num_conv_passes=3, downsample_factors=[(2, 2, 1)]
        ),
    ],
    ids=["hybrid_two_levels", "odd_step_final_crop", "kernel_5_passes_3"],
)
def test_every_level_is_aligned_with_the_input_grid(unet: UNetConfig) -> None:
    """Skip crops, upsampling and the final crop put every level where its input lies."""
    shape = valid_input_shape(unet, (5, 7, 7))
    out_shape = output_shape(unet, shape)
    torch.manual_seed(3)
    raw = torch.rand(1, 1, *shape) + 0.5  # positive: the ReLUs pass it unchanged
    for level in range(len(unet.downsample_factors) + 1):
        model = path_through_level(unet, level)
        with torch.no_grad():
            got = model.logits(raw)[0, 0]
        expected = reference_through_level(unet, raw, level, out_shape)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
