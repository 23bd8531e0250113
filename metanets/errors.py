"""User-facing errors of the metanetwork side.

:class:`MetanetError` is a :class:`zoo.errors.ZooError`, so the ``metanets`` CLI prints
it as one line naming the bad input (exit code 2) exactly like ``zoo`` does.
"""
from zoo.errors import ZooError


class MetanetError(ZooError):
    """A bad metanet name, plugin, option or zoo combination, with a message naming it."""


class NotApplicable(MetanetError):
    """A metanet that cannot run on this zoo at all (reported as n/a with this reason)."""
