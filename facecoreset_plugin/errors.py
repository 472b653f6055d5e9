"""Error types a user can cause; the CLI turns them into one line and exit code 2."""

__all__ = [
    "FacecoresetError",
    "UnknownPluginError",
    "PluginLoadError",
    "InputError",
    "CheckpointError",
    "UnsafeFileError",
]


class FacecoresetError(Exception):
    """Base class of every error caused by user input (files, names, shapes, options)."""


class UnknownPluginError(FacecoresetError, KeyError):
    """A plugin name that no installed distribution registers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginLoadError(FacecoresetError, ImportError):
    """A registered plugin whose module or object could not be imported."""


class InputError(FacecoresetError, ValueError):
    """Bad tensors, shapes, values or file contents."""


class CheckpointError(FacecoresetError, ValueError):
    """A checkpoint that is unreadable, of the wrong format, or has missing or mis-shaped keys."""


class UnsafeFileError(FacecoresetError, ValueError):
    """A file that would need to execute code (unknown pickled classes) to be read."""
