"""The errors a user can act on. Each message names the file, line or key and what to do.

Stage CLIs print them as one line and exit with status 2 (no traceback unless
COCOSNET_DEBUG=1 or --debug); anything else is a bug and keeps its traceback.
"""


class CocosnetError(Exception):
    """Base of the errors whose message is all a user needs."""


class DataError(CocosnetError, ValueError):
    """A sample, list entry or cached file that cannot be used."""


class StorageError(CocosnetError, OSError):
    """A file that could not be written (full disk, permissions)."""


class CheckpointError(CocosnetError):
    """A checkpoint or model file that is corrupt, truncated or built from another config."""


class StageLocked(CocosnetError):
    """Another run of the same stage holds its lock."""


class WeightsError(CocosnetError, ValueError):
    """An external weights file (VGG19) that cannot be used."""


class WeightsNotFound(WeightsError, FileNotFoundError):
    """An external weights file that is not there."""
