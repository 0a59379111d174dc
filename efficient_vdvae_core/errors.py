"""The error types for problems caused by the user's input (config, arguments, missing runs)."""


class UserError(Exception):
    """A problem caused by the user's input: reported as one line on stderr with exit code 2, no traceback."""


class ConfigError(UserError, ValueError):
    """A config problem, reported to the user as one line (exit code 2)."""


EXIT_LOST_PROCESS = 75  # EX_TEMPFAIL: the job lost one of its processes; running it again resumes


class LostProcessError(Exception):
    """Another process of a multi-process job stopped or hung: one line on stderr of every process left, exit 75."""
