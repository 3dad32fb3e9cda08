"""The exception steerheal raises for bad input, so that callers can catch it and tests can match it."""


class SteerhealError(ValueError):
    """Bad input or an unusable state. The message names the input, what is wrong, and the fix."""
