"""Errors a step raises for bad input: the message names the file, column, row or value at fault."""


class InputError(ValueError):
    """The step's input (data or config) is invalid; nothing was written."""


class ConfigError(InputError):
    """The pipeline config is invalid; the message names the key."""
