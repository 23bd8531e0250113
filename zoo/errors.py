"""User-facing errors.

Anything that is the user's mistake (a bad spec field, a path that is not a zoo,
a corrupt shard) raises :class:`ZooError`; the CLIs print its message and exit
non-zero without a traceback. Bugs stay ordinary exceptions.
"""


class ZooError(Exception):
    """An error caused by user input or by a file on disk, with a message that names it.

    The message is one line even when it quotes a file's content or another library's
    multi-line message (a CSV header, tarfile's list of methods tried): the CLIs promise a
    one-line error."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str) and ("\n" in args[0] or "\r" in args[0]):
            args = (" ".join(args[0].split()),)
        super().__init__(*args)


class SpecError(ZooError):
    """A zoo spec field is missing or out of range."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"spec field '{field}' = {value!r} is invalid: {allowed}")
