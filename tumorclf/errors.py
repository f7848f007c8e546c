"""The one base class of errors caused by the user's input, which the CLI prints as one line (exit 2)."""


class UserError(Exception):
    """Bad input: a value, a file or a folder the command cannot use. The message says which and why."""


class ConfigError(UserError, ValueError):
    """A configuration value is missing or invalid; the message says which and why."""


class UsageError(UserError):
    """The command line itself is wrong (unknown flag, missing argument, bad choice)."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (third-party messages span several), else its class name."""
    return " ".join(str(exc).split()) or type(exc).__name__
