"""Errors a step raises for bad input: the message names the file, column, row or value at fault."""


class InputError(ValueError):
    """The step's input (data or config) is invalid; nothing was written."""


class ConfigError(InputError):
    """The pipeline config is invalid; the message names the key."""


class ServiceError(RuntimeError):
    """A server or tool a command talks to (Triton, the KFP API) failed or could not be reached; the message says
    what to do. ``exit_code``: 1 when the service failed, 2 when the command line must change."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
