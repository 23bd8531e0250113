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
        if len(args) == 1 and isinstance(args[0], str):
            args = (_one_line(args[0]),)
        super().__init__(*args)


#: Characters besides \n and \r that end a line for ``str.splitlines`` (and for many terminals).
_BREAKS = "\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def _one_line(msg: str) -> str:
    r"""``msg`` on one line: a line break quoted from a file's name or content (a spec key that
    holds \x1e) is shown escaped, as ``\x1e``; a library's multi-line message is joined by spaces."""
    if any(c in msg for c in _BREAKS):
        msg = "".join(c.encode("unicode_escape").decode("ascii") if c in _BREAKS else c for c in msg)
    if "\n" in msg or "\r" in msg:
        msg = " ".join(msg.split())
    return msg


class SpecError(ZooError):
    """A zoo spec field is missing or out of range."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"spec field '{field}' = {value!r} is invalid: {allowed}")
