"""M nets of one architecture as one wide net: grouped layers over a flat parameter buffer.

Why grouped layers rather than ``torch.func.vmap``: vmap over ``conv2d`` lowers to
the same grouped convolution, but doing it by hand lets the parameters of all M
models live in ONE flat leaf tensor (param-major: each tensor's ``[M, *shape]``
block is contiguous). Backward then writes one flat gradient, the optimizer is a
few fused elementwise ops over it whatever the depth of the net, and dropping a
finished or diverged model is one gather.

Model ``k`` of the group occupies channels ``[k*C, (k+1)*C)`` of every activation,
so ``GroupNorm(1, C)`` per model is ``GroupNorm(M, M*C)``, a conv is a conv with
``groups=M``, and no operation ever mixes two models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layout import Layout
from ..nets import FiGLU, ResNet


class GroupedOps:
    """The ops of :meth:`ResNet._run` for M models at once (activations ``[B, M*C, H, W]``)."""

    def __init__(self, template: ResNet, params: dict, bn: dict, M: int, training: bool, mixes: dict):
        self.mods = dict(template.named_modules())
        self.params, self.bn, self.M, self.training, self.mixes = params, bn, M, training, mixes

    def _weight(self, name):
        w = self.params[f"{name}.weight"]
        mod = self.mods[name]
        if getattr(mod, "fixed_mask", None) is not None:
            w = torch.where(mod.fixed_mask, mod.fixed_values.to(w.dtype), w)
        return w

    def conv(self, name, x):
        mod, M = self.mods[name], self.M
        w = self._weight(name)
        return F.conv2d(x, w.reshape(M * w.shape[1], *w.shape[2:]), None, mod.stride, mod.padding, groups=M)

    def norm(self, name, x):
        mod, M = self.mods[name], self.M
        w, b = self.params[f"{name}.weight"].reshape(-1), self.params[f"{name}.bias"].reshape(-1)
        if isinstance(mod, nn.GroupNorm):
            return F.group_norm(x, M * mod.num_groups, w, b, mod.eps)
        rm, rv = self.bn[f"{name}.running_mean"], self.bn[f"{name}.running_var"]
        # Running statistics stay in the parameters' precision (fp32, or fp64 for exactness
        # checks) whatever the compute dtype.
        dt = torch.promote_types(x.dtype, rm.dtype)
        return F.batch_norm(x.to(dt), rm.view(-1), rv.view(-1), w.to(dt), b.to(dt), self.training,
                            mod.momentum, mod.eps).to(x.dtype)

    def act(self, name, x):
        mod = self.mods[name]
        if isinstance(mod, FiGLU):
            return torch.sigmoid(F.conv2d(x, self.mixes[name].to(x.dtype), groups=self.M)) * x
        return F.relu(x)

    def pool(self, x):
        return x.mean(dim=(2, 3))

    def linear(self, name, x):
        w = self._weight(name)  # [M, O, C]
        h = x.view(x.shape[0], self.M, -1)  # [B, M, C]
        return torch.einsum("bmc,moc->mbo", h, w) + self.params[f"{name}.bias"][:, None, :]


class GroupState:
    """Parameters (and BatchNorm statistics) of M models in one flat, param-major buffer."""

    def __init__(self, template: ResNet, layout: Layout, flat: torch.Tensor, bn: dict, M: int):
        self.template, self.layout, self.M = template, layout, M
        self.flat = flat  # [M * P] leaf tensor
        self.bn = bn  # name -> [M, C]
        dev = flat.device
        self.mixes = {n: m.mix.repeat(M, 1, 1, 1) for n, m in template.named_modules() if isinstance(m, FiGLU)}
        # Which model each flat entry belongs to: per-model scalars (lr, weight decay) become
        # per-entry by one gather.
        sizes = torch.tensor([t.size for t in layout.tensors], device=dev)
        self.model_of = torch.arange(M, device=dev).repeat(len(sizes)).repeat_interleave(sizes.repeat_interleave(M))
        if layout.fixed_mask is not None:
            self.fixed_mask = torch.from_numpy(layout.fixed_mask).to(dev)
            fv = torch.zeros(layout.num_params, device=dev)
            for name, mod in template.named_modules():
                if getattr(mod, "fixed_mask", None) is not None:
                    fv[layout[f"{name}.weight"].slice] = mod.fixed_values.reshape(-1)
            self.fixed_values = fv
        else:
            self.fixed_mask = self.fixed_values = None

    @classmethod
    def from_nets(cls, template: ResNet, nets: list[ResNet], device) -> "GroupState":
        layout = Layout.from_module(template)
        M = len(nets)
        states = [dict(n.named_parameters()) for n in nets]
        flat = torch.cat([torch.stack([s[t.name].detach() for s in states]).reshape(-1) for t in layout.tensors])
        bn = {}
        for name, mod in template.named_modules():
            if isinstance(mod, nn.BatchNorm2d):
                mods = [dict(n.named_modules())[name] for n in nets]
                for b in ("running_mean", "running_var"):
                    bn[f"{name}.{b}"] = torch.stack([getattr(m, b) for m in mods]).to(device)
        return cls(template.to(device), layout, flat.to(device).requires_grad_(True), bn, M)

    def block(self, flat: torch.Tensor, t) -> torch.Tensor:
        return flat[t.offset * self.M: t.stop * self.M].view(self.M, *t.shape)

    def params(self, dtype=torch.float32, flat: torch.Tensor | None = None) -> dict:
        flat = self.flat if flat is None else flat
        flat = flat if dtype == flat.dtype else flat.to(dtype)
        return {t.name: self.block(flat, t) for t in self.layout.tensors}

    @staticmethod
    def layout_input(x: torch.Tensor, channels_last: bool = False, dtype=torch.float32) -> torch.Tensor:
        """``[M, B, C, H, W]`` -> the group's input ``[B, M*C, H, W]`` in ``dtype`` (a copy;
        :func:`zoo.generate.images.grouped_batch` writes this layout directly)."""
        M, B = x.shape[:2]
        h = x.transpose(0, 1).reshape(B, M * x.shape[2], *x.shape[3:]).to(dtype)
        return h.contiguous(memory_format=torch.channels_last) if channels_last else h

    def forward_input(self, h: torch.Tensor, training: bool, dtype=torch.float32,
                      flat: torch.Tensor | None = None) -> torch.Tensor:
        """The group's input ``h [B, M*C, H, W]`` (model k's images in channels
        ``[k*C, (k+1)*C)``, in ``dtype``) -> logits ``[M, B, K]``."""
        ops = GroupedOps(self.template, self.params(dtype, flat), self.bn, self.M, training, self.mixes)
        return self.template._run(h, ops)

    @torch.no_grad()
    def write_slot(self, k: int, net: ResNet) -> None:
        """Overwrite model ``k``'s parameters (and BatchNorm statistics) with ``net``'s."""
        named = dict(net.named_parameters())
        for t in self.layout.tensors:
            self.block(self.flat, t)[k].copy_(named[t.name].detach())
        mods = dict(net.named_modules())
        for key, buf in self.bn.items():
            name, b = key.rsplit(".", 1)
            buf[k].copy_(getattr(mods[name], b))

    def rows(self, flat: torch.Tensor | None = None) -> torch.Tensor:
        """``[M, P]`` in layout order (a copy) of ``flat`` (default: the parameters)."""
        flat = self.flat if flat is None else flat
        return torch.cat([self.block(flat, t).reshape(self.M, -1) for t in self.layout.tensors], dim=1)

    def effective_rows(self) -> torch.Tensor:
        """Weights as the nets use them: fixed entries replaced by their constants."""
        w = self.rows().detach()
        if self.fixed_mask is not None:
            w = torch.where(self.fixed_mask, self.fixed_values, w)
        return w

    def bn_rows(self) -> torch.Tensor | None:
        if not self.bn:
            return None
        return torch.cat([self.bn[t.name].reshape(self.M, -1) for t in self.layout.buffers], dim=1)

    def select_flat(self, flat: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """A flat buffer of the same layout holding only models ``keep``."""
        return torch.cat([self.block(flat, t)[keep].reshape(-1) for t in self.layout.tensors])

    def subset(self, keep: torch.Tensor, extra: dict | None = None) -> tuple["GroupState", dict]:
        """A new group of the models ``keep``; ``extra`` flat buffers (optimizer state) follow."""
        flat = self.select_flat(self.flat.detach(), keep).requires_grad_(True)
        bn = {k: v[keep].clone() for k, v in self.bn.items()}
        new = GroupState(self.template, self.layout, flat, bn, len(keep))
        return new, {k: self.select_flat(v, keep) for k, v in (extra or {}).items()}
