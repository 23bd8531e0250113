"""Nets along a line in weight space, evaluated many at a time.

``theta(alpha) = (1 - alpha) theta_a + alpha theta_b`` for every parameter and BatchNorm
running statistic (integer buffers such as ``num_batches_tracked`` are left alone, as the
Vuenc ``lerp_sd`` does). A net's *fixed constants* (W-Asym ``fixed_mask``/``fixed_values``,
FiGLU ``mix``: every buffer that is not a BatchNorm statistic) are not interpolated: the two
endpoints must hold them bit for bit (:func:`check_constants`), else the line would run
through nets of no zoo. Within one zoo they always do (they derive from the zoo's
``asym_seed``); nets from two zoos with different seeds are refused.

:class:`Evaluator` runs K nets of one architecture on a batch at once with
``torch.func.functional_call`` under ``torch.vmap`` (the K weight sets stacked on a leading
axis; a conv under vmap becomes one grouped conv), so a 25-point curve costs about one
wide forward pass per batch instead of 25 narrow ones (``scripts/bench_analyze.py``).

BatchNorm: the running statistics of an interpolated net are not those of its weights.
With ``bn_reset`` (REPAIR-style, upstream ``gnn/interp.py::reset_bn_stats``) every point,
endpoints included, gets statistics re-estimated from training batches: cumulative
averages (``momentum=None``) over train-mode forward passes, then evaluation in eval mode.
That part runs one net at a time (train-mode BatchNorm writes its buffers in place, which
vmap does not allow); GroupNorm nets need nothing.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import ZooError

BN_STATS = ("running_mean", "running_var")


def stat_keys(net: nn.Module) -> list[str]:
    """State names of BatchNorm running statistics (interpolated, and re-estimated on request)."""
    return [f"{n}.{b}" for n, m in net.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for b in BN_STATS]


def constant_keys(net: nn.Module) -> list[str]:
    """State names of the net's fixed constants: every buffer that is no BatchNorm state."""
    bn = {n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    return [k for k, _ in net.named_buffers() if k.rsplit(".", 1)[0] not in bn]


def has_batchnorm(net: nn.Module) -> bool:
    return bool(stat_keys(net))


def check_constants(net: nn.Module, state_a: dict, state_b: dict, names=("A", "B")) -> None:
    """Refuse to interpolate two states whose fixed constants differ (naming the first)."""
    for k in constant_keys(net):
        a, b = state_a.get(k), state_b.get(k)
        if (a is None) != (b is None) or (a is not None and (a.shape != b.shape or not torch.equal(a, b))):
            raise ZooError(f"cannot interpolate {names[0]} and {names[1]}: their fixed constant {k!r} differs "
                           "(W-Asym masks and values and FiGLU mixes must be bitwise equal along the line; "
                           "nets of zoos with different asym_seed are not connected by it)")


def lerp_states(net: nn.Module, state_a: dict, state_b: dict, alphas) -> dict:
    """``name -> [K, *shape]``: parameters and BatchNorm statistics at each alpha (float64
    arithmetic, stored in the parameters' dtype)."""
    keys = [k for k, _ in net.named_parameters()] + stat_keys(net)
    al = torch.as_tensor(np.asarray(alphas, dtype=np.float64))
    out = {}
    for k in keys:
        a, b = state_a[k].double(), state_b[k].double()
        w = al.view(-1, *([1] * a.dim()))
        out[k] = ((1 - w) * a + w * b).to(state_a[k].dtype)
    return out


class _GroupNorm(nn.Module):
    """``nn.GroupNorm`` written out in plain ops, so that it runs under ``torch.vmap``
    (torch's fused group_norm kernel refuses vmap on the CPU: "querying is_contiguous inside
    of vmap"). Same parameters and names; equal to it up to float rounding."""

    def __init__(self, gn: nn.GroupNorm):
        super().__init__()
        self.num_groups, self.eps = gn.num_groups, gn.eps
        self.weight, self.bias = gn.weight, gn.bias

    def forward(self, x):
        B, C = x.shape[:2]
        shape = (1, C) + (1,) * (x.dim() - 2)
        if self.num_groups == 1:  # layer_norm over (C, H, W): one fused kernel, fine under vmap
            h = F.layer_norm(x, x.shape[1:], eps=self.eps)
        else:
            g = x.reshape(B, self.num_groups, -1)
            mean, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
            h = ((g - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        return h * self.weight.view(shape) + self.bias.view(shape) if self.weight is not None else h


def vmappable(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose GroupNorms run under vmap (state names unchanged)."""
    net = copy.deepcopy(net)
    for name, mod in list(net.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(mod, child_name, _GroupNorm(child))
    return net


class Evaluator:
    """Mean cross-entropy and accuracy of K stacked nets on fixed data.

    ``X`` uint8 images ``[N, C, H, W]`` (normalised per batch by ``normalize``), ``Y`` labels;
    ``batch`` images per forward pass, ``max_nets`` nets per vmap call (memory grows with
    both: ``batch * max_nets`` images' activations at once)."""

    def __init__(self, X, Y, normalize, batch: int = 256, max_nets: int = 25, device="cpu"):
        self.X, self.Y, self.normalize = X.to(device), Y.to(device), normalize
        self.batch, self.max_nets, self.device = int(batch), int(max_nets), device

    @torch.no_grad()
    def __call__(self, net: nn.Module, stacked: dict, constants: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``stacked``: name -> ``[K, *shape]`` (parameters and BatchNorm statistics);
        ``constants``: the rest of the state, shared by the K nets. Returns loss, acc ``[K]``."""
        net = vmappable(net).to(self.device).eval()
        consts = {k: v.to(self.device) for k, v in (constants or {}).items()}
        K = next(iter(stacked.values())).shape[0]
        losses, accs = np.zeros(K), np.zeros(K)

        def f(params, x):
            return functional_call(net, {**params, **consts}, (x,))

        fv = torch.vmap(f, in_dims=(0, None))
        n = len(self.Y)
        for s in range(0, K, self.max_nets):
            chunk = {k: v[s:s + self.max_nets].to(self.device) for k, v in stacked.items()}
            k_n = next(iter(chunk.values())).shape[0]
            loss = torch.zeros(k_n, dtype=torch.float64, device=self.device)
            correct = torch.zeros(k_n, dtype=torch.float64, device=self.device)
            for i in range(0, n, self.batch):
                x = self.normalize(self.X[i:i + self.batch])
                y = self.Y[i:i + self.batch]
                logits = fv(chunk, x).float()  # [k, b, classes]
                loss += F.cross_entropy(logits.transpose(1, 2), y.expand(k_n, -1), reduction="none").double().sum(1)
                correct += (logits.argmax(-1) == y).double().sum(1)
            losses[s:s + k_n] = (loss / n).cpu().numpy()
            accs[s:s + k_n] = (correct / n).cpu().numpy()
        return losses, accs

    @torch.no_grad()
    def one(self, net: nn.Module) -> tuple[float, float]:
        """Loss and accuracy of one ordinary net (the one-at-a-time reference)."""
        net = net.to(self.device).eval()
        loss = correct = 0.0
        for i in range(0, len(self.Y), self.batch):
            logits = net(self.normalize(self.X[i:i + self.batch])).float()
            y = self.Y[i:i + self.batch]
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(-1) == y).sum())
        return loss / len(self.Y), correct / len(self.Y)


@torch.no_grad()
def reestimate_bn(net: nn.Module, stacked: dict, constants: dict, X, normalize, batch: int = 256,
                  batches: int | None = None) -> dict:
    """``stacked`` with every net's BatchNorm statistics re-estimated REPAIR-style: reset,
    ``momentum=None`` (a cumulative average), train-mode passes over ``X`` (uint8 training
    images; the first ``batches`` batches, default all), one net at a time."""
    keys = stat_keys(net)
    if not keys:
        return stacked
    work = copy.deepcopy(net)
    bns = [m for m in work.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    params = [k for k in stacked if k not in keys]
    K = next(iter(stacked.values())).shape[0]
    out = {k: v.clone() for k, v in stacked.items()}
    n = len(X) if batches is None else min(len(X), batches * batch)
    dev = next(work.parameters()).device
    for j in range(K):
        work.load_state_dict({**{k: stacked[k][j] for k in params}, **constants}, strict=False)
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        work.train()
        for i in range(0, n, batch):
            work(normalize(X[i:i + batch].to(dev)))
        state = work.state_dict()
        for k in keys:
            out[k][j] = state[k]
    return out


def curve(ev: Evaluator, net: nn.Module, state_a: dict, state_b: dict, alphas, *,
          bn_data=None, names=("A", "B")) -> dict:
    """Loss and accuracy at each alpha on ``ev``'s data: ``{"loss": [K], "acc": [K]}``.

    ``bn_data``: ``(X_train uint8, normalize)`` to re-estimate BatchNorm statistics at every
    point (ignored for nets without BatchNorm)."""
    check_constants(net, state_a, state_b, names)
    stacked = lerp_states(net, state_a, state_b, alphas)
    consts = {k: state_a[k] for k in constant_keys(net) if state_a.get(k) is not None}
    if bn_data is not None and has_batchnorm(net):
        stacked = reestimate_bn(net, stacked, consts, *bn_data, batch=ev.batch)
    loss, acc = ev(net, stacked, consts)
    return {"loss": loss, "acc": acc}
