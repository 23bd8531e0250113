"""Zoo-side plumbing of the analyses: which models pair up, their states, their data.

A zoo generated with ``[pairs] size = k`` has a ``pair`` column: the models of one tuple
share every sampled hyper-parameter and differ in init and data order. An LMC "pair" is two
models of one tuple (all two-element combinations of a k-tuple; the summaries average within
a tuple first, so a tuple counts once).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ZooError
from ..generate.images import load as load_images
from ..store.reader import Zoo, open as open_reader  # noqa: A004
from .align import asymmetry_of, fold_fixed


@dataclass(frozen=True)
class Pair:
    tuple_id: int
    a: int
    b: int


def open_zoo(path, verify: bool = True) -> Zoo:
    z = open_reader(path, verify=verify)
    try:
        z.net_config
    except ZooError as e:
        raise ZooError(f"{path}: cannot rebuild its nets ({e}); the analyses need a buildable architecture") from None
    return z


def pairs_of(z, max_pairs: int | None = None) -> tuple[list[Pair], list[str]]:
    """The zoo's pairs (tuples from the ``pair`` column, diverged members left out) and notes
    on what was left out."""
    t = z.table
    if "pair" not in t:
        raise ZooError(f"{z.path}: the zoo has no 'pair' column: it was not generated as pairs. Generate one "
                       "with [pairs] size = 2 in its spec (presets digits-lmc-*), e.g. "
                       "`zoo generate digits-lmc-resnet8 --out runs/lmc-std`")
    notes, out = [], []
    diverged = set(t.loc[t["diverged"].astype(bool), "model_id"]) if "diverged" in t else set()
    for pid, grp in t.groupby("pair", sort=True):
        ids = [int(i) for i in grp["model_id"] if int(i) not in diverged]
        if len(ids) < len(grp):
            notes.append(f"tuple {int(pid)}: {len(grp) - len(ids)} diverged member(s) left out")
        out += [Pair(int(pid), a, b) for a, b in itertools.combinations(sorted(ids), 2)]
    if max_pairs is not None:
        keep = sorted({p.tuple_id for p in out})[:max_pairs]
        out = [p for p in out if p.tuple_id in keep]
    if not out:
        raise ZooError(f"{z.path}: no pair of non-diverged models to interpolate")
    return out, notes


#: The datasets imported zoos name (manifest ``data.name``) -> metazoo's data source.
IMPORTED_DATA = {"cifar10": "cifar10", "mnist": "mnist", "fashion_mnist": "fashion_mnist", "svhn_cropped": "svhn",
                 "svhn": "svhn"}


def data_of(z, source: str | None = None, device="cpu"):
    """The image data the zoo was trained on (``source`` overrides it, e.g. for imported zoos)."""
    if source is not None:
        spec = {"source": source}
    elif z.spec and z.spec.get("data"):
        spec = z.spec["data"]
    elif (z.manifest.get("data") or {}).get("source"):
        spec = {"source": z.manifest["data"]["source"]}
    elif IMPORTED_DATA.get((z.manifest.get("data") or {}).get("name")):  # an imported zoo's dataset
        spec = {"source": IMPORTED_DATA[z.manifest["data"]["name"]]}
    else:
        raise ZooError(f"{z.path}: the zoo does not say which data it was trained on; pass --data SOURCE")
    return load_images(spec, device)


def net_and_state(z, model_id: int, checkpoint: str = "final", fold: bool = False):
    """``(net, state dict)`` of one model (``fold``: W-Asym fixed entries folded into
    ordinary weights, :func:`zoo.analyze.align.fold_fixed`)."""
    net = z.rebuild(int(model_id), checkpoint)
    if fold:
        fold_fixed(net)
    return net, {k: v.detach().clone() for k, v in net.state_dict().items()}


def variant_of(z) -> str:
    """'standard', 'W-Asym' or 'sigma-Asym' (from a rebuilt net)."""
    return {None: "standard", "W-Asym": "W-Asym", "sigma-Asym": "sigma-Asym"}[asymmetry_of(z.rebuild(int(z.ids[0])))]


def subset(n: int, size: int | None, seed: int = 0) -> torch.Tensor:
    """A fixed, seeded subset of ``n`` rows (all when ``size`` is None or >= n), in order."""
    if size is None or size >= n:
        return torch.arange(n)
    return torch.from_numpy(np.sort(np.random.default_rng(seed).choice(n, size, replace=False)))
