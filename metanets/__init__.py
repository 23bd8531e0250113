"""metazoo's consumer side: metanetworks that read weight datasets written by ``zoo``.

A new metanet joins the benchmark by registering itself::

    from metanets import register

    @register("my-net")
    class MyNet(torch.nn.Module):
        view = "vector"          # or "layers", "stats" (see metanets.data)
        def __init__(self, info): ...
        def forward(self, x): ...  # -> [B], one prediction per net
"""
__version__ = "0.1.0"

from .registry import register  # noqa: E402  (the one name plugin files need)

__all__ = ["register", "__version__"]
