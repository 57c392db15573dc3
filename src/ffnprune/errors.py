"""One exception type for every problem a user can fix; the CLI prints its message without a traceback."""


class FfnpruneError(Exception):
    """A problem with the user's input or environment, stated with what to do about it."""


class FfnpruneWarning(UserWarning):
    """An option that has no effect, or a choice a user should know about."""
