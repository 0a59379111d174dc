"""The error types for problems caused by the user's input (config, arguments, missing runs)."""


class UserError(Exception):
    """A problem caused by the user's input: reported as one line on stderr with exit code 2, no traceback."""


class ConfigError(UserError, ValueError):
    """A config problem, reported to the user as one line (exit code 2)."""
