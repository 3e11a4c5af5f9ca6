"""Exceptions raised by blockwise.

Every error says what was expected and what came, and names the file, key or
block it is about, so that a user can act on it without reading the code.
"""


class BlockwiseError(Exception):
    """Base class of every error blockwise raises on purpose."""


class ConfigError(BlockwiseError):
    """A run configuration is missing, malformed or inconsistent."""


class InputError(BlockwiseError):
    """An input volume is missing, of the wrong shape or dtype, or empty."""


class StoreError(BlockwiseError):
    """The graph store is unreachable, inconsistent or belongs to another run."""


class BlockFailedError(BlockwiseError):
    """One or more blocks of a run failed; the message lists them with their ROIs."""


class CheckpointError(BlockwiseError):
    """A network checkpoint is missing, unreadable, or does not fit the config."""


class RunLockedError(BlockwiseError):
    """Another driver is running on the same run directory."""


class RunChangedError(BlockwiseError):
    """The config, an input or the code changed since finished blocks were computed."""
