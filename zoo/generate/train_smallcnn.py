"""The Small CNN Zoo's trainer: M smallcnns trained as one grouped net.

L2 is Keras' ``kernel_regularizer``: ``weight_decay * sum(kernel**2)`` added to the loss, on
kernels only. :class:`SmallCNNGroup` trains M models sharing batch size, data fraction and
optimizer as one grouped net; every random draw of a model (init, data order, dropout masks)
comes from its own generators, so a model comes out the same alone or in any group
(``tests/test_smallcnn.py``). The optimizers are SGD, Adam and RMSProp with Keras' defaults.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import SpecError
from ..layout import Layout
from ..nets import NetConfig
from ..nets.smallcnn import LAYERS, OPTIMIZERS, SmallCNN, build_smallcnn, check_input_size, padding_px
from ..seeding import derived_seed
from ..store import METRICS, metric_column
from .images import epoch_plan, train_subset
from .train import Result, steps_per_epoch

# Keras defaults (tf.keras.optimizers.get(name) with only the learning rate changed).
ADAM_BETAS, RMS_RHO, KERAS_EPS = (0.9, 0.999), 0.9, 1e-7


class SmallCNNGroup:
    """M smallcnns as one grouped net: parameters ``name -> [M, *shape]``; conv with ``groups=M``.

    A W-Asym net's fixed entries enter every use of a weight through :meth:`weight`
    (``torch.where``, as :class:`zoo.nets.AsymConv2d`): exactly the constants, zero gradient."""

    def __init__(self, cfg: NetConfig, nets: list[SmallCNN], device):
        self.cfg, self.M = cfg, len(nets)
        self.layout = Layout.from_module(nets[0])
        self.params = {t.name: torch.stack([dict(n.named_parameters())[t.name].detach() for n in nets])
                       .to(device).requires_grad_(True) for t in self.layout.tensors}
        # the same constants in every net of the zoo: one copy, broadcast over the M models
        self.fixed = {f"{name}.weight": (mod.fixed_mask.to(device), mod.fixed_values.to(device))
                      for name, mod in nets[0].named_modules() if getattr(mod, "fixed_mask", None) is not None}
        self.tanh = torch.tensor([n.activation == "tanh" for n in nets], device=device)
        self.p = [n.p for n in nets]

    def weight(self, name: str) -> torch.Tensor:
        """``[M, *shape]`` parameters ``name`` as the nets use them (fixed entries put in)."""
        w = self.params[name]
        if name in self.fixed:
            mask, values = self.fixed[name]
            w = torch.where(mask, values.to(w.dtype), w)
        return w

    def subset(self, keep: list[int], states: dict) -> dict:
        """Keep models ``keep`` (in place); optimizer ``states`` (name -> tensors) follow."""
        k = torch.tensor(keep, device=self.tanh.device)
        self.params = {n: v.detach()[k].requires_grad_(True) for n, v in self.params.items()}
        self.tanh = self.tanh[k]
        self.p = [self.p[i] for i in keep]
        self.M = len(keep)
        return {s: {n: v[k] for n, v in st.items()} for s, st in states.items()}

    def forward(self, x: torch.Tensor, drop_gens=None) -> torch.Tensor:
        """``x [M, B, C, H, W]`` -> logits ``[M, B, K]``; dropout when ``drop_gens`` (one generator
        per model) is given, else eval mode."""
        if self.cfg.grayscale:
            x = x.mean(dim=2, keepdim=True)
        M, B = x.shape[:2]
        h = x.transpose(0, 1).reshape(B, M * x.shape[2], *x.shape[3:])
        pad = padding_px(self.cfg)
        tanh_ch = None
        for name in LAYERS:
            w, b = self.weight(f"{name}.weight"), self.params[f"{name}.bias"]
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), stride=2, padding=pad, groups=M)
            if tanh_ch is None:
                tanh_ch = self.tanh.repeat_interleave(w.shape[1])[None, :, None, None]
            if self.tanh.all():
                h = torch.tanh(h)
            elif self.tanh.any():
                h = torch.where(tanh_ch, torch.tanh(h), F.relu(h))
            else:
                h = F.relu(h)
            if drop_gens is not None and any(p > 0 for p in self.p):
                h = h * self._drop_mask(h, drop_gens)
        h = h.mean(dim=(2, 3)).view(B, M, -1)
        return torch.einsum("bmc,mkc->mbk", h, self.weight("dense.weight")) + self.params["dense.bias"][:, None]

    def _drop_mask(self, h, gens):
        B, MC, H, W = h.shape
        C = MC // self.M
        parts = []
        for p, g in zip(self.p, gens):
            if p > 0:  # each model draws from its own generator: groups do not change its masks
                keep = torch.rand(B, C, H, W, generator=g) >= p
                parts.append(keep.float() / (1 - p))
            else:
                parts.append(torch.ones(B, C, H, W))
        return torch.cat(parts, dim=1).to(h.device)

    def l2(self) -> torch.Tensor:
        """``[M]`` sums of squared kernels as the nets use them (what Keras' l2 regulariser
        scales; a W-Asym net's fixed entries add a constant, no gradient)."""
        return sum(self.weight(n).pow(2).flatten(1).sum(1) for n in self.params if n.endswith(".weight"))

    def rows(self) -> torch.Tensor:
        """``[M, P]`` in layout order, as the nets use them (fixed entries put in), as stored."""
        return torch.cat([self.weight(t.name).detach().reshape(self.M, -1) for t in self.layout.tensors], 1)


def _opt_state(group: SmallCNNGroup, kind: str) -> dict:
    z = {n: torch.zeros_like(v.detach()) for n, v in group.params.items()}
    if kind == "adam":
        return {"m": z, "v": {n: torch.zeros_like(t) for n, t in z.items()}}
    return {"v": z} if kind == "rmsprop" else {"buf": z}


@torch.no_grad()
def _step(group: SmallCNNGroup, st: dict, kind: str, lr: torch.Tensor, mom: torch.Tensor, t: int) -> None:
    """One Keras-style optimizer step for every model (lr and momentum per model)."""
    for n, p in group.params.items():
        g = p.grad
        shape = (-1,) + (1,) * (p.dim() - 1)
        a = lr.view(shape)
        if kind == "adam":
            b1, b2 = ADAM_BETAS
            st["m"][n].mul_(b1).add_(g, alpha=1 - b1)
            st["v"][n].mul_(b2).addcmul_(g, g, value=1 - b2)
            a = a * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            p.sub_(a * st["m"][n] / (st["v"][n].sqrt() + KERAS_EPS))
        elif kind == "rmsprop":
            st["v"][n].mul_(RMS_RHO).addcmul_(g, g, value=1 - RMS_RHO)
            p.sub_(a * g / (st["v"][n].sqrt() + KERAS_EPS))
        else:
            buf = st["buf"][n]
            buf.mul_(mom.view(shape)).add_(g)
            p.sub_(a * buf)
        p.grad = None


def train_smallcnn_group(jobs, cfg: NetConfig, data, checkpoints: list, device: str = "cpu",
                         eval_batch: int = 1024):
    """Train ``jobs`` (sharing batch size, train fraction and optimizer) as one group; return
    :class:`zoo.generate.train.Result` per job, in order."""
    check_input_size(cfg, tuple(data.x_train.shape[2:]))
    hp0 = jobs[0].hp
    kind = hp0["optimizer"]
    if kind not in OPTIMIZERS:
        raise SpecError("hparams.optimizer", kind, f"allowed for smallcnn: {', '.join(OPTIMIZERS)}")
    group = SmallCNNGroup(cfg, [build_smallcnn(cfg, j.seed, j.hp) for j in jobs], device)
    active = list(range(len(jobs)))  # indices into jobs of the models still in the group
    results = [Result(j.model_id, j.hp) for j in jobs]
    data_gens = [torch.Generator().manual_seed(derived_seed(j.seed, "data")) for j in jobs]
    drop_gens = [torch.Generator().manual_seed(derived_seed(j.seed, "dropout")) for j in jobs]
    subsets = [train_subset(g, len(data.y_train), j.hp["train_fraction"]) for g, j in zip(data_gens, jobs)]
    spe = steps_per_epoch(len(data.y_train), hp0)
    B = int(hp0["batch_size"])
    st = _opt_state(group, kind)
    hw = tuple(data.x_train.shape[2:])
    ck_epochs = [c for c in checkpoints if c != "final"]

    def hp_vec(key):
        return torch.tensor([float(jobs[i].hp[key]) for i in active], device=device)

    def record(ckpt, sel):
        w = group.rows().cpu().numpy()
        for r in sel:
            i = active[r]
            res = results[i]
            res.weights[ckpt] = w[r]
            vals = []
            for X, Y, idx in ((data.x_train, data.y_train, subsets[i]),
                              (data.x_test, data.y_test, torch.arange(len(data.y_test)))):
                vals += _evaluate(group, r, X, Y, idx.to(device), data, eval_batch)
            res.metrics.update({metric_column(m, ckpt): float(v) for m, v in zip(METRICS, vals)})

    if 0 in ck_epochs:
        record("epoch_0", range(len(active)))
    step = 0
    for epoch in range(max(j.hp["epochs"] for j in jobs)):
        plans = [epoch_plan(data_gens[i], subsets[i], jobs[i].hp, hw)["order"] for i in active]
        order = torch.stack(plans).to(device)
        lr, wd, mom = hp_vec("lr"), hp_vec("weight_decay"), hp_vec("momentum")
        bad = torch.zeros(len(active), dtype=torch.bool, device=device)
        gens = [drop_gens[i] for i in active]
        for s in range(spe):
            idx = order[:, s * B:(s + 1) * B]
            x, y = data.normalize(data.x_train[idx]), data.y_train[idx]
            logits = group.forward(x, gens)
            ce = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
            loss = ce + wd * group.l2()
            finite = torch.isfinite(loss)
            bad |= ~finite
            torch.where(finite, loss, torch.zeros_like(loss)).sum().backward()
            step += 1
            _step(group, st, kind, lr, mom, step)
        done = epoch + 1
        bad_l = bad.cpu().tolist()
        for r, i in enumerate(active):
            if bad_l[r]:
                results[i].diverged, results[i].diverged_epoch = True, done
        for ck in ck_epochs:
            sel = [r for r, i in enumerate(active) if ck > 0 and (ck == done or (bad_l[r] and ck > done))]
            if sel:
                record(f"epoch_{ck}", sel)
        finals = [r for r, i in enumerate(active) if bad_l[r] or jobs[i].hp["epochs"] == done]
        if finals:
            record("final", finals)
            keep = [r for r in range(len(active)) if r not in set(finals)]
            if not keep:
                break
            st = group.subset(keep, st)
            active = [active[r] for r in keep]
    return results


@torch.no_grad()
def _evaluate(group: SmallCNNGroup, r: int, X, Y, idx, data, eval_batch: int):
    """Mean cross-entropy and accuracy of model ``r`` of the group on rows ``idx`` (eval mode)."""
    loss = correct = 0.0
    one = _single(group, r)
    for a in range(0, len(idx), eval_batch):
        j = idx[a:a + eval_batch]
        logits = one.forward(data.normalize(X[j])[None])[0]
        loss += F.cross_entropy(logits, Y[j], reduction="sum").item()
        correct += (logits.argmax(1) == Y[j]).sum().item()
    return [loss / len(idx), correct / len(idx)]


def _single(group: SmallCNNGroup, r: int) -> SmallCNNGroup:
    one = SmallCNNGroup.__new__(SmallCNNGroup)
    one.cfg, one.M, one.layout = group.cfg, 1, group.layout
    one.params = {n: v.detach()[r:r + 1] for n, v in group.params.items()}
    one.fixed = group.fixed
    one.tanh, one.p = group.tanh[r:r + 1], [0.0]
    return one
