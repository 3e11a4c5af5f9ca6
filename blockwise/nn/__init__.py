"""The affinity network: a MALA-style U-Net with valid convolutions.

Modules:

- :mod:`blockwise.nn.architecture` — shape arithmetic (input/output shapes,
  context, valid inputs, parameter count, a text description) and the raw
  intensity convention; no torch, so ``plan`` and config validation can use it.
- :mod:`blockwise.nn.unet` — the torch module (:class:`~blockwise.nn.unet.UNet`).
- :mod:`blockwise.nn.checkpoint` — saving, loading and checking checkpoints.
- :mod:`blockwise.nn.losses` — training losses.

This package's ``__init__`` imports nothing: importing torch is left to the
modules that need it, so CPU-only code paths stay light.
"""
