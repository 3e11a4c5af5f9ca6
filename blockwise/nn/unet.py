"""The MALA U-Net in torch: valid convolutions, affinities in [0, 1].

Layout (Funke et al. 2018, arXiv 1709.02974), per level ``i`` with ``n_i =
num_fmaps * fmap_inc_factor**i`` feature maps:

- down: ``num_conv_passes`` x (valid Conv3d, ReLU), then MaxPool3d by
  ``downsample_factors[i]`` (kernel = stride = factor);
- up: ConvTranspose3d ``n_(i+1) -> n_i`` with kernel = stride = factor, then ReLU
  (MALA's learned upsampling; a constant upsample followed by a 1x1 convolution
  would also do, but the transposed convolution is what the paper trained), the
  centre crop of the level's down-path features concatenated in front of it,
  and ``num_conv_passes`` x (valid Conv3d, ReLU) ``2 n_i -> n_i -> n_i``;
- at the end: a centre crop to a multiple of the product of the pooling
  factors (translation equivariance, see :mod:`blockwise.nn.architecture`), a
  1x1x1 Conv3d to ``num_outputs`` channels and a sigmoid.

Hybrid nets use kernel ``(1, ky, kx)`` in their upper ``levels_2d`` levels: a real
Conv3d that convolves each section in 2D. Shapes and the parameter count equal
:mod:`blockwise.nn.architecture`'s arithmetic; tests check both.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from blockwise.config import UNetConfig, Vec3
from blockwise.errors import ConfigError, InputError
from blockwise.nn import architecture

logger = logging.getLogger(__name__)


def _conv_pass(in_channels: int, out_channels: int, kernel: Vec3, passes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for p in range(passes):
        layers.append(nn.Conv3d(in_channels if p == 0 else out_channels, out_channels, kernel))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _centre_crop(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Crop the last three axes of ``x`` to ``shape``, the same on both sides.

    Every difference is even by construction (odd kernels), so the crop is exact.
    """
    begin = [(s - t) // 2 for s, t in zip(x.shape[-3:], shape, strict=True)]
    return x[
        ...,
        begin[0] : begin[0] + shape[0],
        begin[1] : begin[1] + shape[1],
        begin[2] : begin[2] + shape[2],
    ]


class UNet(nn.Module):
    """MALA-style U-Net with valid convolutions predicting affinities.

    Input: float tensor ``(batch, in_channels, z, y, x)`` (raw normalized with
    :func:`blockwise.nn.architecture.normalize_raw`), where ``(z, y, x)`` is a
    valid input shape (:func:`blockwise.nn.architecture.is_valid_input`).
    Output: ``(batch, num_outputs, *output_shape)`` in [0, 1], centred on the
    input, ``context_vx`` smaller on each side.

    Attributes:
        config: the architecture.
        num_outputs: output channels (one per affinity offset).
    """

    def __init__(self, unet: UNetConfig, num_outputs: int) -> None:
        """Build the layers for ``unet`` with ``num_outputs`` output channels.

        Raises:
            ConfigError: if ``num_outputs`` is not positive.
        """
        super().__init__()
        if num_outputs < 1:
            raise ConfigError(
                f"the U-Net needs at least one output channel (one per affinity offset), "
                f"got num_outputs={num_outputs}"
            )
        self.config = unet
        self.num_outputs = num_outputs
        levels = architecture.levels(unet)
        passes = unet.num_conv_passes
        self._num_levels = len(levels)
        self._final_crop = architecture.final_crop_vx(unet)

        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in levels:
            in_channels = unet.in_channels if level.index == 0 else levels[level.index - 1].fmaps
            self.down.append(_conv_pass(in_channels, level.fmaps, level.kernel, passes))
            if level.factor is not None:
                below = levels[level.index + 1].fmaps
                self.pool.append(nn.MaxPool3d(level.factor, stride=level.factor))
                self.upsample.append(
                    nn.Sequential(
                        nn.ConvTranspose3d(below, level.fmaps, level.factor, stride=level.factor),
                        nn.ReLU(inplace=True),
                    )
                )
                self.up.append(_conv_pass(2 * level.fmaps, level.fmaps, level.kernel, passes))
        self.head = nn.Conv3d(levels[0].fmaps, num_outputs, 1)

    def check_input(self, raw: torch.Tensor) -> Vec3:
        """Validate an input tensor and return its output shape (z, y, x).

        Raises:
            InputError: if ``raw`` is not ``(batch, in_channels, z, y, x)`` floating point.
            ConfigError: if ``(z, y, x)`` is not a valid input shape; the message
                names the offending level and the nearest valid shapes.
        """
        expected = f"(batch, {self.config.in_channels}, z, y, x)"
        if raw.dim() != 5 or raw.shape[1] != self.config.in_channels:
            raise InputError(f"the U-Net expects input of shape {expected}, got {tuple(raw.shape)}")
        if not raw.is_floating_point():
            raise InputError(
                f"the U-Net expects floating-point input (normalize_raw), got {raw.dtype}"
            )
        return architecture.output_shape(self.config, tuple(int(s) for s in raw.shape[-3:]))

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        """Affinity logits (before the sigmoid), ``(batch, num_outputs, *output_shape)``.

        The input is validated (:meth:`check_input`) except while
        ``torch.compile`` traces; a compiled caller validates its shapes first.
        """
        if not torch.compiler.is_compiling():
            self.check_input(raw)
        skips: list[torch.Tensor] = []
        features = raw
        for i in range(self._num_levels):
            features = self.down[i](features)
            if i < self._num_levels - 1:
                skips.append(features)
                features = self.pool[i](features)
        for i in reversed(range(self._num_levels - 1)):
            upsampled = self.upsample[i](features)
            skip = _centre_crop(skips[i], tuple(upsampled.shape[-3:]))
            features = self.up[i](torch.cat([skip, upsampled], dim=1))
        shape = tuple(s - c for s, c in zip(features.shape[-3:], self._final_crop, strict=True))
        return self.head(_centre_crop(features, shape))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """Affinities in [0, 1], ``(batch, num_outputs, *output_shape)``."""
        return torch.sigmoid(self.logits(raw))


def build_unet(unet: UNetConfig, num_outputs: int) -> UNet:
    """A freshly initialised :class:`UNet` (torch's default initialisation).

    Args:
        unet: the architecture.
        num_outputs: output channels, one per affinity offset.

    Raises:
        ConfigError: if ``num_outputs`` is not positive.
    """
    model = UNet(unet, num_outputs)
    logger.debug(
        "built a U-Net with %d parameters, context %s voxels per side",
        num_parameters(model),
        architecture.context_vx(unet),
    )
    return model


def num_parameters(model: nn.Module) -> int:
    """Number of parameters (weights and biases) of ``model``."""
    return sum(p.numel() for p in model.parameters())
