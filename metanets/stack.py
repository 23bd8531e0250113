"""Several runs of one metanet trained as one stacked model (HFTA-style).

The lr sweep's runs share their initialisation and every batch (both derive from seed,
name and tag, not from lr), so R of them train as one model whose parameters are stacked
``[R, *shape]``: the input batch is read once and every layer runs as one R-wide kernel
(a Linear's weights concatenated, a Conv1d with ``groups=R``; DeepSets' compute-bound pooled
sum goes replica by replica through its own kernel). Runs with different seeds
stack too, each replica reading its own batches (``[R, B, ...]``).

Each replica keeps what ``train.fit`` keeps for one run: its own lr in a per-replica AdamW
(:class:`StackedAdamW`, torch's formula), its own best-validation-epoch snapshot and its
own divergence flag. A replica whose training loss becomes non-finite is frozen on the
device (no update from that batch on, BatchNorm running statistics included) and the flags
are read once per epoch, with the validation predictions, instead of once per batch. So a
replica's :class:`train.FitResult` is the one ``fit(lr=..., seed=...)`` returns alone, up
to rounding (tested in float64, tests/test_stack.py).

Only the built-in metanets listed in :data:`STACKED` stack, by exact class: a plugin, even
one subclassing a built-in, trains run by run through ``train.fit``.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import registry, train
from .data import as_view
from .errors import MetanetError
from .metrics import r2
from .models.deepsets import DeepSets, PooledReLU
from .models.dmc import DMC, convs_fast
from .models.mlp import MLP
from .models.statnn import StatNN, StatNNStd


#: Use torch's fused AdamW kernel for the stacked update on the CPU (scripts/bench_metanets.py
#: ``--adam`` times both; False gives the unfused, device-agnostic update).
FUSED_CPU = True


class StackedAdamW:
    """``torch.optim.AdamW`` (its single-tensor formula, no amsgrad) over stacked ``[R, ...]``
    parameters with one lr per replica. ``step(grads, mask)`` moves only the replicas in
    ``mask`` (a device tensor: no host sync); a frozen replica gets weight decay 1 and step
    size 0, which leave its parameters exactly as they are, and its gradient (nan after a
    divergence) is zeroed so that its moments stay finite."""

    def __init__(self, params, lrs, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.beta1, self.beta2, self.eps = *betas, eps
        self.lrs = torch.tensor(lrs, dtype=torch.float64)  # Python floats, as torch computes with them
        self.like = self.params[0]
        self.weight_decay = weight_decay
        self.decay = (1 - self.lrs * weight_decay).to(self.like)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0  # every live replica has taken every step, so one count serves them all
        self.step_sizes = self.like.new_zeros(0, len(lrs))

    def _step_size(self) -> torch.Tensor:
        """``lr / (1 - beta1^t)`` per replica, from a table made on the host in float64 (as torch
        does in Python) and copied to the device once per 1,024 steps, not every step."""
        if self.t > len(self.step_sizes):
            t = torch.arange(1, len(self.step_sizes) + 1025, dtype=torch.float64)[:, None]
            self.step_sizes = (self.lrs / (1 - self.beta1 ** t)).to(self.like)
        return self.step_sizes[self.t - 1]

    @torch.no_grad()
    def step(self, grads, mask: torch.Tensor) -> None:
        self.t += 1
        if FUSED_CPU and self.like.device.type == "cpu" and hasattr(torch, "_fused_adamw_"):
            return self._step_fused(grads, mask)
        b1, b2 = self.beta1, self.beta2
        bc2_sqrt = (1 - b2 ** self.t) ** 0.5
        step_size = torch.where(mask, self._step_size(), 0)
        decay = torch.where(mask, self.decay, 1)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = torch.where(mask.view(shape), g, 0)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v.sqrt().div_(bc2_sqrt).add_(self.eps)
            p.mul_(decay.view(shape))
            p.add_(m.div(denom).mul_(-step_size.view(shape)))


    def _step_fused(self, grads, mask: torch.Tensor) -> None:
        """The same update on the CPU, replica by replica, with torch's fused AdamW kernel (the one
        ``torch.optim.AdamW(fused=True)`` runs): one vectorised pass over each replica's
        parameters, moments and gradients instead of about ten, 6-8x faster for the MLP's
        1.3M-parameter replicas. Equal to the unfused step up to float rounding. A frozen
        replica is skipped (reading the mask is free on the CPU)."""
        step = torch.tensor(float(self.t))
        wd = self.weight_decay
        for r in torch.nonzero(mask).flatten().tolist():
            torch._fused_adamw_([p[r] for p in self.params], [g[r].contiguous() for g in grads], [m[r] for m in self.m],
                                [v[r] for v in self.v], [], [step] * len(self.params), lr=float(self.lrs[r]),
                                beta1=self.beta1, beta2=self.beta2, weight_decay=wd, eps=self.eps,
                                amsgrad=False, maximize=False)


def _linear(x, w, b, shared: bool):
    """Replica r's ``Linear``: ``[B, i]`` (shared, one GEMM over the R concatenated weights)
    or ``[R, B, i]`` -> ``[R, B, o]``."""
    R, o = w.shape[:2]
    if shared:
        return F.linear(x, w.flatten(0, 1), b.flatten()).unflatten(-1, (R, o)).movedim(-2, 0)
    return torch.baddbmm(b[:, None], x.flatten(1, -2), w.transpose(1, 2)).view(*x.shape[:-1], o)


def _layer_norm(x, w, b, eps):
    """Replica r's ``LayerNorm`` over the last dimension of ``[R, ..., h]``."""
    shape = (w.shape[0],) + (1,) * (x.dim() - 2) + (w.shape[1],)
    return F.layer_norm(x, x.shape[-1:], eps=eps) * w.view(shape) + b.view(shape)


class Stack:
    """R metanets of one class (``models``, identical but for their parameters) as one:
    ``self.params`` holds each parameter stacked ``[R, *shape]``, in ``named_parameters``
    order; ``self.buffers`` the per-replica buffers (BatchNorm statistics). Buffers that
    are the same for every replica (StatNN's input scaling) are read from ``models[0]``."""

    replica_buffers: tuple = ()  # suffixes of buffer names kept per replica

    def __init__(self, models):
        self.base, self.R, self.training = models[0], len(models), True
        self.names = [n for n, _ in self.base.named_parameters()]
        each = [dict(m.named_parameters()) for m in models]
        self.params = [torch.stack([e[n].detach() for e in each]).requires_grad_() for n in self.names]
        self.P = dict(zip(self.names, self.params))
        self.buffer_names = [n for n, _ in self.base.named_buffers() if n.endswith(self.replica_buffers)]
        bufs = [dict(m.named_buffers()) for m in models]
        self.buffers = [torch.stack([b[n] for b in bufs]).clone() for n in self.buffer_names]
        self.B = dict(zip(self.buffer_names, self.buffers))

    def state(self) -> list[torch.Tensor]:
        """Everything a replica's result depends on: parameters, then per-replica buffers."""
        return [p.detach() for p in self.params] + self.buffers

    def load_into(self, r: int, model: nn.Module, state=None) -> None:
        """Copy replica ``r`` (of ``state``, a snapshot of :meth:`state`; default the current
        one) into ``model``."""
        state = state or self.state()
        own = dict(model.named_parameters()) | dict(model.named_buffers())
        with torch.no_grad():
            for n, t in zip(self.names + self.buffer_names, state):
                own[n].copy_(t[r])

    def _sequential(self, seq: nn.Sequential, prefix: str, h, shared: bool):
        """Run a Sequential of Linear, LayerNorm and ReLU per replica."""
        for i, m in enumerate(seq):
            key = f"{prefix}.{i}."
            if type(m) is nn.Linear:
                h, shared = _linear(h, self.P[key + "weight"], self.P[key + "bias"], shared), False
            elif type(m) is nn.LayerNorm:
                h = _layer_norm(h, self.P[key + "weight"], self.P[key + "bias"], m.eps)
            elif type(m) is nn.ReLU:
                h = h.relu()
            else:
                raise TypeError(f"cannot stack {type(m).__name__} ({prefix}.{i})")
        return h

    def __call__(self, x, shared: bool, alive: torch.Tensor | None = None) -> torch.Tensor:
        """``[R, B]`` predictions for ``x`` of ``[B, ...]`` (``shared``: every replica reads it)
        or ``[R, B, ...]``; ``alive`` ([R] bool) says whose BatchNorm statistics may update."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, features, view: str, layout, batch_size: int = 512) -> np.ndarray:
        """``[R, N]`` eval-mode predictions of every replica, copied to the host once."""
        self.training = False
        outs = [self(as_view(features[a:a + batch_size], view, layout), shared=True).float()
                for a in range(0, len(features), batch_size)]
        return torch.cat(outs, 1).cpu().numpy() if outs else np.zeros((self.R, 0), np.float32)


class StackedMLP(Stack):
    def __call__(self, x, shared, alive=None):
        return self._sequential(self.base.net, "net", x, shared).squeeze(-1)


class StackedStatNN(Stack):
    def __call__(self, x, shared, alive=None):
        # the input scaling (unbiased variance, statnn-std's standardisation) is shared
        x = self.base.inputs(x) if shared else self.base.inputs(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return self._sequential(self.base.net, "net", x, shared).squeeze(-1)


class StackedDeepSets(Stack):
    def __call__(self, x, shared, alive=None):
        """DeepSets.forward per replica: the closed-form phi of ``DeepSets._pool_sum``."""
        d = x.shape[-1]
        a, b = self.P["phi.0.weight"][..., 0], self.P["phi.0.bias"]  # [R, h]
        g, beta = self.P["phi.1.weight"], self.P["phi.1.bias"]
        A, B = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        c2, c1, c0 = ((A * A).mean(1), (A * B).mean(1), (B * B).mean(1))
        c2, c1, c0 = (c[:, None, None] for c in (c2, c1, c0))
        var = c2 * x * x + 2 * c1 * x + c0  # [R, B, d], x broadcast when shared
        r = torch.rsqrt(var + self.base.phi[1].eps)
        mix = torch.stack([g * A, g * B, beta], 1)  # [R, 3, h]
        budget = self.base.max_elements or (1 << 22 if x.device.type == "cpu" else 1 << 28)
        chunk = max(1, budget // (r.shape[1] * a.shape[1]))
        xr = x * r
        # replica by replica: the pooled sum is compute-bound, [b, chunk, h] blocks are as large
        # as any one kernel needs, and one replica's block at a time keeps memory at one run's
        pooled = torch.stack([PooledReLU.apply(xr[i], r[i], mix[i], chunk) for i in range(self.R)])
        return self._sequential(self.base.rho, "rho", pooled / d, False).squeeze(-1)


class StackedDMC(Stack):
    """DMC as grouped modules: Conv1d with ``groups=R`` and BatchNorm over R*C channels (which
    is per-replica BatchNorm, running statistics included; vmap could not update those)."""

    replica_buffers = ("running_mean", "running_var", "num_batches_tracked")

    def _convs(self, h, shared, alive):
        R = self.R
        for i, m in enumerate(self.base.convs):
            key = f"convs.{i}."
            if type(m) is nn.Conv1d:
                w, b = self.P[key + "weight"], self.P[key + "bias"]
                # the first conv reads one shared channel: one conv with R*C outputs
                h = F.conv1d(h, w.flatten(0, 1), b.flatten(), groups=1 if shared else R)
                shared = False
            elif type(m) is nn.ReLU:
                h = h.relu()
            elif type(m) is nn.BatchNorm1d:
                rm, rv, nbt = (self.B[key + k] for k in self.replica_buffers)
                w, b = self.P[key + "weight"].flatten(), self.P[key + "bias"].flatten()
                if not self.training:
                    h = F.batch_norm(h, rm.flatten(), rv.flatten(), w, b, False, 0.0, m.eps)
                    continue
                new_m, new_v = rm.flatten().clone(), rv.flatten().clone()
                h = F.batch_norm(h, new_m, new_v, w, b, True, m.momentum, m.eps)
                with torch.no_grad():  # a diverged replica's statistics stay as they were
                    keep = alive[:, None]
                    rm.copy_(torch.where(keep, new_m.view_as(rm), rm))
                    rv.copy_(torch.where(keep, new_v.view_as(rv), rv))
                    nbt.add_(alive.to(nbt.dtype))
            elif type(m) is nn.MaxPool1d:
                h = F.max_pool1d(h, m.kernel_size)
            else:
                raise TypeError(f"cannot stack {type(m).__name__} (convs.{i})")
        return h

    def __call__(self, x, shared, alive=None):
        if alive is None:
            alive = torch.ones(self.R, dtype=torch.bool, device=x.device)
        h = x[:, None, :] if shared else x.transpose(0, 1)  # [B, 1 or R, D]
        h = convs_fast(lambda t: self._convs(t, shared, alive), h)  # [B, R*64, L]
        h = h.unflatten(1, (self.R, -1)).permute(1, 0, 3, 2)  # [R, B, L, 64]
        h = self._sequential(self.base.per_position, "per_position", h, False).mean(dim=2)
        return self._sequential(self.base.head, "head", h, False).squeeze(-1)


#: Runs per stacked model at most (``bench.fit_runs`` stacks more in groups): memory grows with
#: R (DMC's activations, DeepSets' ``[R, b, d]`` terms); the sweep (6) and 5 seeds fit in one.
MAX_REPLICAS = 8

#: Metanet class -> its stacked form. Exact classes: a subclass may change the forward.
STACKED = {MLP: StackedMLP, StatNN: StackedStatNN, StatNNStd: StackedStatNN, DeepSets: StackedDeepSets,
           DMC: StackedDMC}


def supports(name: str) -> bool:
    """Whether metanet ``name`` trains stacked (else :func:`bench.fit_runs` runs it run by run)."""
    return registry.get(name) in STACKED


def fit_stacked(name: str, ws, runs, *, epochs: int = train.EPOCHS, batch_size: int = train.BATCH_SIZE,
                weight_decay: float = train.WEIGHT_DECAY, device="cpu", tag: str = "",
                progress=None) -> list[train.FitResult]:
    """Train the ``runs`` ((lr, seed) pairs) of metanet ``name`` as one stacked model; one
    :class:`train.FitResult` per run, in order, each as ``train.fit`` would return it.

    Runs that all have one seed share the batches (the input is read once); otherwise each
    replica reads its own. ``train_time_s`` and ``cpu_time_s`` of each result are an equal
    share of the stacked training's. ``progress``: an optional callable ``(epoch, val_r2)``
    after every epoch, ``val_r2`` the list of the replicas still training."""
    if not supports(name):
        raise MetanetError(f"metanet {name!r} does not train stacked; these do: "
                           f"{', '.join(sorted(c.registry_name for c in STACKED))}")
    train.check_fit_args(name, epochs, batch_size, [lr for lr, _ in runs])
    cls = registry.get(name)
    view, info, R = cls.view, ws.info, len(runs)
    feats = {s: train.features(ws, s, view).to(device) for s in ("train", "val", "test")}
    y = {s: ws.y(s).to(device) for s in ("train", "val", "test")}
    t0 = time.perf_counter(), time.process_time()
    models = [train.build(name, info, seed, device, tag) for _, seed in runs]
    train.check_output(name, models[0], as_view(feats["train"][:2], view, info.layout))
    for m in models:
        if hasattr(m, "prepare"):
            m.prepare(feats["train"])
    stk = STACKED[cls](models)
    opt = StackedAdamW(stk.params, [lr for lr, _ in runs], weight_decay)
    seeds = [seed for _, seed in runs]
    shared = len(set(seeds)) == 1
    orders = [torch.Generator().manual_seed(train.run_seed(s, "order", name, tag)) for s in seeds[:1 if shared else R]]
    n = len(feats["train"])
    yv = y["val"].cpu().numpy()
    alive = torch.ones(R, dtype=torch.bool, device=device)  # read on the host once per epoch
    best_score, best_epoch, best = [-math.inf] * R, [0] * R, [t.clone() for t in stk.state()]
    history, diverged_epoch, running = [[] for _ in range(R)], [None] * R, set(range(R))
    for epoch in range(1, epochs + 1):
        stk.training = True
        perm = torch.stack([torch.randperm(n, generator=g) for g in orders]).to(feats["train"].device)
        for a in range(0, n, batch_size):
            idx = perm[:, a:a + batch_size]
            if idx.shape[1] < 2:  # as train.fit: BatchNorm (DMC) cannot train on a batch of one net
                continue
            if shared:
                xb, yb = as_view(feats["train"][idx[0]], view, info.layout), y["train"][idx[0]].expand(R, -1)
            else:  # one gather of [R, B] rows from memory; a streamed zoo reads replica by replica
                rows = feats["train"]
                xb = rows[idx] if isinstance(rows, torch.Tensor) else torch.stack([rows[i] for i in idx])
                yb = y["train"][idx]
            pred = stk(xb, shared, alive)
            losses = F.mse_loss(pred.float(), yb, reduction="none").mean(1)
            alive &= torch.isfinite(losses)
            grads = torch.autograd.grad(losses.sum(), stk.params)
            opt.step(grads, alive)
        preds = stk.predict(feats["val"], view, info.layout)
        now_alive = alive.cpu().tolist()
        scores = {r: r2(yv, preds[r]) for r in sorted(running)}
        if progress:
            progress(epoch, list(scores.values()))
        for r, score in scores.items():
            history[r].append(score)
            if np.isfinite(score) and score > best_score[r]:
                best_score[r], best_epoch[r] = score, epoch
                for b, t in zip(best, stk.state()):
                    b[r].copy_(t[r])
            if not now_alive[r]:
                diverged_epoch[r] = epoch
                running.discard(r)
        if not running:
            break
    results = []
    for r, ((lr, seed), model) in enumerate(zip(runs, models)):
        stk.load_into(r, model, best)
        results.append(train.finish_run(name, model, seed, lr, best_epoch[r], history[r], feats, y, view, info, t0,
                                     diverged_epoch[r]))
    wall, cpu = time.perf_counter() - t0[0], time.process_time() - t0[1]
    for res in results:
        res.train_time_s, res.cpu_time_s = wall / R, cpu / R
    return results
