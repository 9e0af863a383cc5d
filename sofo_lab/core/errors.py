"""Errors that reach the user as one line: what was wrong, the value, what is allowed."""


class ConfigError(ValueError):
    """A configuration value that cannot work. The message names the key, the value and the fix."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")


class RunFailed(RuntimeError):
    """A run that stopped early (non-finite loss); the last good checkpoint is kept."""
