"""User-facing errors.

Every error a user can cause (bad config, bad path, bad class id) is a `UserError`: the CLI prints its one-line
message and exits with code 2 before anything is written.
"""


class UserError(ValueError):
    """A problem with the user's input; the message names the bad value and the valid ones."""


def choice_error(what: str, value, valid) -> UserError:
    """Build the standard 'unknown X' error listing the valid choices."""
    return UserError(f"unknown {what} {value!r}; valid: {', '.join(map(str, sorted(valid)))}")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stops and its last good checkpoint is kept."""
