"""Loading user metanets from a Python file (``metanets bench ... --plugin my_metanet.py``).

The file is imported as a module; the classes it decorates with
``@metanets.register("name")`` join the registry. No edit to metazoo is needed.
"""
from __future__ import annotations

import importlib.util
import sys
import zlib
from pathlib import Path

from . import registry
from .errors import MetanetError
from .models import _registry


def load_plugin(path) -> list[str]:
    """Import the plugin file at ``path``; return the metanet names it registered."""
    p = Path(path)
    if not p.is_file():
        raise MetanetError(f"plugin {p}: no such file")
    if p.suffix != ".py":
        raise MetanetError(f"plugin {p}: expected a Python file ending in .py")
    # A stable module name per file (crc32, never the salted hash()), so loading the
    # same file twice re-registers the same classes instead of clashing.
    mod_name = f"metanets_plugin_{p.stem}_{zlib.crc32(str(p.resolve()).encode()):08x}"
    # (The built-ins registered when metanets.registry was imported, so a plugin reusing a
    # built-in name is the one refused, and blamed.)
    spec = importlib.util.spec_from_file_location(mod_name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except MetanetError as e:
        sys.modules.pop(mod_name, None)
        raise MetanetError(f"plugin {p}: {e}") from e
    except (Exception, SystemExit) as e:  # the user's code (sys.exit too): report it against the file, one line
        sys.modules.pop(mod_name, None)
        raise MetanetError(f"plugin {p} failed to import: {type(e).__name__}: {' '.join(str(e).split())}") from e
    names = [n for n, cls in _registry.REGISTRY.items() if cls.__module__ == mod_name]
    if not names:
        raise MetanetError(f"plugin {p} registered no metanet: decorate an nn.Module class with "
                           f"@metanets.register(\"name\") and give it a view attribute "
                           f"({', '.join(registry.VIEWS)})")
    for n in names:
        _registry.REGISTRY[n].plugin_path = str(p.resolve())
    return names
