"""The packages' layers, checked: every import in zoo/ and metanets/, those inside functions too.

A module imports only modules of its own layer group or of a lower layer; no two modules
import each other, directly or around a circle; and an import inside a function is there
only to defer a heavy or optional dependency named in DEFERRED, with a comment saying why.
"""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo", "metanets")

#: Lowest first. A module belongs to the longest group name that prefixes it; it may import
#: its own group and the groups of lower layers, never a group beside it or above it.
LAYERS = [
    ["zoo._version", "zoo.errors"],
    ["zoo.seeding", "zoo.console", "zoo.fs", "zoo.layout", "zoo.workers"],  # leaves beside each other
    ["zoo.nets"],
    ["zoo.store"],
    ["zoo.generate", "zoo.hub"],  # making zoos and sharing them: neither imports the other
    ["zoo.analyze"],  # loss-landscape studies of a zoo's nets (reads zoos, rebuilds nets, loads images)
    ["zoo.cli"],
    ["zoo"],  # the package root (zoo.open, Zoo, Layout, ...): for users, never imported from inside zoo
    ["metanets.errors"],
    ["metanets.data", "metanets.metrics"],  # weight-space inputs and scores
    ["metanets.models"],  # every metanet; models._registry is their leaf
    ["metanets"],  # the engine: registry, train, stack, bench, uncertainty, persist, plugins, report, demo
    ["metanets.cli"],
]

#: Dependencies an import inside a function may defer, and why.
DEFERRED = {
    "ray": "an optional extra (metazoo[ray]), needed only by zoo generate --ray",
    "torchvision": "an optional extra (metazoo[vision]), needed only by its image sources",
    "sklearn": "sklearn.datasets, for the digits source only",
    "torch_geometric": "about a second to import, for the graph metanet only",
    "skops": "seconds to import (it scans scikit-learn's types), for scikit-learn metanet files only",
    "matplotlib": "for the report's figures only; the Agg backend must be chosen before pyplot loads",
    "torch": "about a second to import: zoo.layout and zoo.store.format read and verify zoos without it",
}

#: Package roots whose PEP 562 ``__getattr__`` loads some of their own modules on first use (so
#: that ``import zoo`` stays torch-free); no other import of metazoo's own code is deferred.
LAZY_ROOT = {"zoo": {"zoo.store.reader"}}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _in_function(node, parents) -> bool:
    p = parents.get(node)
    while p is not None:
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
        p = parents.get(p)
    return False


def _imports():
    """``(module, line, imported module or None for an outside one, top-level name, in a function)``."""
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module
                # `from pkg import sub` imports the module pkg.sub; `from pkg import name`, pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
            else:
                continue
            for t in dict.fromkeys(targets):
                top = t.split(".")[0]
                yield mod, node.lineno, (t if top in PACKAGES else None), top, _in_function(node, parents)


IMPORTS = list(_imports())


def _group(mod: str) -> tuple[int, str]:
    best = max((g for layer in LAYERS for g in layer if mod == g or mod.startswith(g + ".")), key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer), best


def test_every_module_is_in_a_layer():
    for mod in MODULES:
        _group(mod)  # raises for a module no group claims


def test_imports_follow_the_layers():
    wrong = []
    for mod, line, target, _, _ in IMPORTS:
        if target is None or target == mod:
            continue
        (lm, gm), (lt, gt) = _group(mod), _group(target)
        if not (lt < lm or gt == gm):
            wrong.append(f"{MODULES[mod].relative_to(ROOT)}:{line}: {mod} ({gm}) imports {target} ({gt})")
    assert not wrong, "imports against the layers (see LAYERS):\n" + "\n".join(wrong)


def test_no_import_circles():
    graph = {m: set() for m in MODULES}
    for mod, _, target, _, _ in IMPORTS:
        if target is not None and target != mod:
            graph[mod].add(target)
    # Tarjan's strongly connected components: any with more than one module is a circle
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_imports_inside_functions_only_defer_listed_dependencies_and_say_why():
    bad, used = [], set()
    for mod, line, target, top, in_function in IMPORTS:
        if not in_function:
            continue
        lines = MODULES[mod].read_text().split("\n")
        said_why = "#" in lines[line - 1] or lines[line - 2].strip().startswith("#")
        lazy_root = target in LAZY_ROOT.get(mod, ())
        if not said_why or not (lazy_root or (target is None and top in DEFERRED)):
            bad.append(f"{MODULES[mod].relative_to(ROOT)}:{line}: {lines[line - 1].strip()}")
        if not lazy_root:
            used.add(top)
    assert not bad, ("imports inside functions that defer nothing listed in DEFERRED, or without a comment "
                     "saying why (import it at the top instead):\n" + "\n".join(bad))
    assert used == set(DEFERRED), f"DEFERRED lists {sorted(set(DEFERRED) - used)}, which nothing defers any more"


def test_zoo_never_imports_metanets():
    assert not [(m, t) for m, _, t, _, _ in IMPORTS if m.startswith("zoo") and t and t.startswith("metanets")]


def test_checking_a_zoo_imports_no_torch():
    """``zoo verify`` and ``zoo import`` check a zoo's bytes in a fresh child interpreter (a
    damaged shard can make libhdf5 loop): that child loads the format, never torch, which would
    add about two seconds to every verification."""
    code = ("import sys, zoo, zoo.store.format, zoo.store.integrity; "
            "print(sorted(m for m in ('torch', 'zoo.store.reader', 'zoo.nets') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert run.stdout.strip() == "[]"
    code = "import zoo, sys; zoo.open; print('torch' in sys.modules)"  # the reader still loads on first use
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout.strip() == "True"
