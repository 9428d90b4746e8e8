"""Errors a user can act on. The CLI prints their message on one line and exits 2 (no traceback).

They subclass ValueError so library callers can catch them the ordinary way.
"""


class TrainingError(ValueError):
    """Base class: a problem with the user's input (model name, recipe, data), not a bug."""


class ConfigError(TrainingError):
    """A bad recipe file, an unknown recipe key or an invalid value."""


class DataError(TrainingError):
    """A dataset that cannot be found or parsed."""


class ModelError(TrainingError):
    """An unknown model name or an argument the model does not accept."""
