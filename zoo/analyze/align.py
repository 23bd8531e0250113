"""Git Re-Basin weight matching (Ainsworth et al. 2023) for our ResNets and plain CNNs.

A :class:`PermSpec` says, for every tensor of a net's state, which permutation acts on each
of its axes (``None``: none). :func:`perm_spec` derives it from the net itself:

- ResNet (post-activation ``conv -> norm -> act``, 1x1 conv + norm shortcut where the shape
  changes): the *residual stream* carries one permutation from the stem through every block
  of a stage without a shortcut conv (the addition ``out + h`` forces block input and output
  to share it); a shortcut conv starts the next stream. Each block's inner channels have
  their own permutation. Norm weights, biases and BatchNorm running statistics follow their
  channels. GroupNorm(1, C) is permutation-equivariant (one group); more groups would not be.
- Plain CNN (a chain of convs, global average pooling, one dense layer: the smallcnn):
  conv ``i`` maps ``P_{i-1} -> P_i``, the dense layer reads ``P_last``.

:func:`weight_matching` is coordinate descent over the permutations: for each, in a seeded
random order, solve the linear assignment that maximises ``sum_k <W_a, P W_b>`` over the
tensors it touches (the other axes already permuted), until a sweep gains nothing; from
``restarts`` starts (identity, then random), keeping the best objective (coordinate descent
stops in local optima with residual connections, samuela/git-re-basin#8).

Only standard nets are permuted. A W-Asym net's fixed entries sit at fixed positions:
permuting the channels moves them, so the permuted net is no longer a net of the zoo (or,
with the constants re-imposed at the old positions, no longer the same function). A
sigma-Asym (FiGLU) net stays the same function only if its mix F becomes ``P F P^T``, and
two nets with different F cannot be interpolated. Both are refused with that reason;
``fold_fixed`` turns a W-Asym net into a standard one holding the same effective weights
(the fold-then-align ablation: the result is no longer W-Asymmetric).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.func import functional_call

from ..errors import ZooError

STATS = ("running_mean", "running_var")


@dataclass(frozen=True)
class PermSpec:
    """``axes``: state name -> one permutation name (or None) per axis; ``sizes``: permutation
    name -> its length. State entries not in ``axes`` (``num_batches_tracked``) never move."""

    axes: dict
    sizes: dict

    def touching(self, p: str, keys) -> list[tuple[str, int]]:
        """(tensor, axis) pairs of ``keys`` that permutation ``p`` acts on."""
        return [(k, ax) for k in keys for ax, q in enumerate(self.axes[k]) if q == p]


@dataclass
class Alignment:
    """Permutations taking net B onto net A (``perms[p][i]``: which channel of B goes to
    position ``i``), the matching objective ``sum_k <W_a, P W_b>``, and per restart how it went."""

    perms: dict
    objective: float
    sweeps: int
    restarts: list = field(default_factory=list)  # [(objective, sweeps)] per start


# ------------------------------------------------------------------ specs

def asymmetry_of(net: nn.Module) -> str | None:
    """'W-Asym', 'sigma-Asym' or None (a standard net)."""
    if any(getattr(m, "fixed_mask", None) is not None for m in net.modules()):
        return "W-Asym"
    if any(isinstance(getattr(m, "mix", None), torch.Tensor) for m in net.modules()):
        return "sigma-Asym"
    return None


def check_alignable(net: nn.Module) -> None:
    """Refuse an asymmetric net, saying why (see the module docstring)."""
    kind = asymmetry_of(net)
    if kind == "W-Asym":
        raise ZooError("weight matching refused: a W-Asym net's fixed entries sit at fixed positions, and "
                       "permuting its channels moves them (the result is no longer a net of its zoo); "
                       "--fold-asym folds them into ordinary weights first (then it is no longer W-Asymmetric)")
    if kind == "sigma-Asym":
        raise ZooError("weight matching refused: a sigma-Asym (FiGLU) net keeps its function under a channel "
                       "permutation P only if its fixed mix F becomes P F P^T, and nets with different F "
                       "cannot be interpolated")


def fold_fixed(net: nn.Module) -> nn.Module:
    """The W-Asym ``net`` as a standard net with the same effective weights (in place): the
    fixed entries become ordinary, trainable-looking weights and the masks are dropped."""
    with torch.no_grad():
        for m in net.modules():
            if getattr(m, "fixed_mask", None) is not None:
                m.weight.copy_(m.effective_weight())
                m.fixed_mask = None
                m.fixed_values = None
    return net


def _norm(axes: dict, name: str, mod: nn.Module, p: str) -> None:
    for k, _ in mod.named_parameters(recurse=False):
        axes[f"{name}.{k}"] = (p,)
    if isinstance(mod, nn.BatchNorm2d) and mod.track_running_stats:
        for k in STATS:
            axes[f"{name}.{k}"] = (p,)
    if isinstance(mod, nn.GroupNorm) and mod.num_groups != 1:
        raise ZooError(f"no permutation spec: GroupNorm '{name}' has {mod.num_groups} groups (channel "
                       "permutations would have to respect them)")


def _conv(axes: dict, name: str, mod: nn.Module, p_out, p_in) -> None:
    axes[f"{name}.weight"] = (p_out, p_in) + (None,) * (mod.weight.dim() - 2)
    if mod.bias is not None:
        axes[f"{name}.bias"] = (p_out,)


def perm_spec(net: nn.Module) -> PermSpec:
    """The permutation spec of one of our ResNets or plain CNNs (ZooError for other nets)."""
    check_alignable(net)
    mods = dict(net.named_modules())
    axes: dict = {}
    if all(k in mods for k in ("conv1", "norm1", "layer1", "fc")):
        stream = "P_stem"
        _conv(axes, "conv1", mods["conv1"], stream, None)
        _norm(axes, "norm1", mods["norm1"], stream)
        s = 1
        while f"layer{s}" in mods:
            for b, block in enumerate(mods[f"layer{s}"]):
                p = f"layer{s}.{b}"
                inner = f"P_{p}.inner"
                out = f"P_{p}.out" if block.has_shortcut else stream
                _conv(axes, f"{p}.conv1", block.conv1, inner, stream)
                _norm(axes, f"{p}.norm1", block.norm1, inner)
                _conv(axes, f"{p}.conv2", block.conv2, out, inner)
                _norm(axes, f"{p}.norm2", block.norm2, out)
                if block.has_shortcut:
                    _conv(axes, f"{p}.shortcut_conv", block.shortcut_conv, out, stream)
                    _norm(axes, f"{p}.shortcut_norm", block.shortcut_norm, out)
                stream = out
            s += 1
        axes["fc.weight"] = (None, stream)
        axes["fc.bias"] = (None,)
    else:
        convs = [(k, m) for k, m in mods.items() if isinstance(m, nn.Conv2d)]
        lins = [(k, m) for k, m in mods.items() if isinstance(m, nn.Linear)]
        other = [k for k, m in mods.items() if k and m.__class__.__name__ not in ("AsymConv2d", "AsymLinear")
                 and not isinstance(m, (nn.Conv2d, nn.Linear, nn.ReLU, nn.Tanh, nn.Dropout))]
        if not convs or len(lins) != 1 or other:
            raise ZooError(f"no permutation spec for a {type(net).__name__}: weight matching knows our ResNets "
                           "and plain CNNs (convs, global average pooling, one dense layer)")
        prev = None
        for k, m in convs:
            _conv(axes, k, m, f"P_{k}", prev)
            prev = f"P_{k}"
        k, m = lins[0]
        axes[f"{k}.weight"] = (None, prev)
        if m.bias is not None:
            axes[f"{k}.bias"] = (None,)
    state = net.state_dict()
    sizes = {}
    for k, ax in axes.items():
        for d, p in enumerate(ax):
            if p is not None:
                n = state[k].shape[d]
                if sizes.setdefault(p, n) != n:
                    raise ZooError(f"permutation spec mismatch: {p} acts on {k} axis {d} of size {n}, "
                                   f"elsewhere on size {sizes[p]}")
    return PermSpec(axes, sizes)


# ------------------------------------------------------------- matching

def _permuted(spec: PermSpec, perms: dict, k: str, w: torch.Tensor, skip_axis: int | None = None) -> torch.Tensor:
    for ax, p in enumerate(spec.axes[k]):
        if p is not None and ax != skip_axis:
            w = w.index_select(ax, perms[p])
    return w


def apply_permutation(spec: PermSpec, perms: dict, state: dict) -> dict:
    """A copy of ``state`` (a state dict) with every tensor of the spec permuted."""
    return {k: (_permuted(spec, perms, k, v) if k in spec.axes else v.clone()) for k, v in state.items()}


def _matched_keys(spec: PermSpec, state: dict) -> list[str]:
    # weights, biases and norm affines; running statistics follow but are not matched
    return [k for k in spec.axes if k in state and not k.endswith(STATS)]


def objective(spec: PermSpec, perms: dict, a: dict, b: dict) -> float:
    """``sum_k <a_k, (P b)_k>`` over the matched tensors."""
    return float(sum((a[k].double() * _permuted(spec, perms, k, b[k].double())).sum()
                     for k in _matched_keys(spec, a)))


def _descend(spec, a, b, keys, perms, order_rng, max_iter) -> tuple[dict, int]:
    names = sorted(spec.sizes)
    touch = {p: spec.touching(p, keys) for p in names}
    for sweep in range(1, max_iter + 1):
        gained = False
        for i in order_rng.permutation(len(names)):
            p = names[i]
            n = spec.sizes[p]
            A = torch.zeros(n, n, dtype=torch.float64)
            for k, ax in touch[p]:
                wa = a[k].double().movedim(ax, 0).reshape(n, -1)
                wb = _permuted(spec, perms, k, b[k].double(), skip_axis=ax).movedim(ax, 0).reshape(n, -1)
                A += wa @ wb.T
            A = A.numpy()
            _, ci = linear_sum_assignment(A, maximize=True)
            old = A[np.arange(n), perms[p].numpy()].sum()
            new = A[np.arange(n), ci].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                gained = True
                perms[p] = torch.from_numpy(ci).long()
        if not gained:
            return perms, sweep
    return perms, max_iter


def weight_matching(spec: PermSpec, a: dict, b: dict, *, seed: int = 0, restarts: int = 1,
                    max_iter: int = 100) -> Alignment:
    """Permutations of B that best match A (state dicts of one architecture), by coordinate
    descent from ``restarts`` starts: the identity, then random permutations; each start
    visits the permutations in its own seeded random order."""
    if restarts < 1:
        raise ZooError(f"--restarts {restarts}: must be >= 1")
    keys = _matched_keys(spec, a)
    best, runs = None, []
    for r in range(restarts):
        rng = np.random.default_rng([seed, r])
        perms = {p: (torch.arange(n) if r == 0 else torch.from_numpy(rng.permutation(n)).long())
                 for p, n in sorted(spec.sizes.items())}
        perms, sweeps = _descend(spec, a, b, keys, perms, rng, max_iter)
        obj = objective(spec, perms, a, b)
        runs.append((obj, sweeps))
        if best is None or obj > best.objective:
            best = Alignment(perms, obj, sweeps)
    best.restarts = runs
    return best


def distance(a: dict, b: dict, keys) -> float:
    """L2 distance between two states over ``keys``."""
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys) ** 0.5)


@torch.no_grad()
def _logits(net: nn.Module, state: dict, x: torch.Tensor) -> torch.Tensor:
    was = net.training
    net.eval()
    try:
        return functional_call(net, state, (x,))
    finally:
        net.train(was)


def max_logit_diff(net: nn.Module, state_a: dict, state_b: dict, x: torch.Tensor) -> float:
    """``max |f_a(x) - f_b(x)|`` of one architecture under two states (eval mode)."""
    return float((_logits(net, state_a, x) - _logits(net, state_b, x)).abs().max())


def align(net_a: nn.Module, net_b: nn.Module, x: torch.Tensor | None = None, *, seed: int = 0,
          restarts: int = 1, max_iter: int = 100, tol: float = 1e-3) -> tuple[dict, dict]:
    """Net B's state permuted onto net A, and a report: objective and L2 distance before and
    after, sweeps, and (given a batch ``x``) ``max_abs_dlogits`` between B and permuted B.

    A permutation that changes B's function (above ``tol``) is a bug in the spec: refused."""
    spec = perm_spec(net_a)
    perm_spec(net_b)
    sa, sb = net_a.state_dict(), net_b.state_dict()
    res = weight_matching(spec, sa, sb, seed=seed, restarts=restarts, max_iter=max_iter)
    pb = apply_permutation(spec, res.perms, sb)
    keys = _matched_keys(spec, sa)
    ident = {p: torch.arange(n) for p, n in spec.sizes.items()}
    report = {"objective_before": objective(spec, ident, sa, sb), "objective": res.objective,
              "distance_before": distance(sa, sb, keys), "distance_after": distance(sa, pb, keys),
              "sweeps": res.sweeps, "restart_objectives": [o for o, _ in res.restarts],
              "moved_channels": int(sum(int((res.perms[p] != ident[p]).sum()) for p in ident))}
    if x is not None:
        ref, d = _logits(net_b, sb, x), max_logit_diff(net_b, sb, pb, x)
        report["max_abs_dlogits"] = d
        if d > tol * max(1.0, float(ref.abs().max())):
            raise AssertionError(f"permuted net differs from the original by max |dlogits| = {d:.3g}: "
                                 "the permutation spec does not match the net")
    return pb, report
