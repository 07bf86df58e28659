"""Errors a user can fix: reported as one line, from one rank, with exit code 2."""


class UsageError(Exception):
    """Bad input (job file, command line, data). The message is one line:
    where (file, key or line), what is wrong, and how to fix it."""

    exit_code = 2


class ConfigError(UsageError):
    """A job file or `--set` override that does not validate."""


class DataError(UsageError):
    """Input data that cannot be read (malformed line, unknown tag, ...)."""
