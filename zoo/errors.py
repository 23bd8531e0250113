"""User-facing errors.

Anything that is the user's mistake (a bad spec field, a path that is not a zoo,
a corrupt shard) raises :class:`ZooError`; the CLIs print its message and exit
non-zero without a traceback. Bugs stay ordinary exceptions.
"""


class ZooError(Exception):
    """An error caused by user input or by a file on disk, with a message that names it."""


class SpecError(ZooError):
    """A zoo spec field is missing or out of range."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"spec field '{field}' = {value!r} is invalid: {allowed}")
