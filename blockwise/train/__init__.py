"""Training the affinity U-Net (``blockwise train CONFIG``).

Modules:

- :mod:`blockwise.train.config` — the training config (:class:`TrainConfig`).
- :mod:`blockwise.train.data` — reading and checking the training region.
- :mod:`blockwise.train.pipeline` — the gunpowder 1.4.4 batch pipeline.
- :mod:`blockwise.train.trainer` — the loop: losses, checkpoints, resume, log.
- :mod:`blockwise.train.validation` — scoring a held-out region.
- :mod:`blockwise.train.log` — the JSON-lines log and the loss-curve plot.

Nothing is imported here, so loading the config does not import torch or gunpowder.
"""
