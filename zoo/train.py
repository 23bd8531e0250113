"""Training zoo members: the group trainer and the one-model-at-a-time reference.

Both paths draw the same random numbers for a model (init from its seed, data order
and augmentation from its own generator), use the same schedule and the same loss,
and differ only in how the arithmetic is batched: the reference uses plain
``nn.Module`` layers and ``torch.optim``; the group runs M models as one wide net
(``zoo.grouped``) with a vectorised optimizer. ``tests/test_train.py`` checks that a
model comes out the same either way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .data import ImageData, augment, epoch_plan, train_subset
from .grouped import GroupState
from .layout import Layout
from .nets import NetConfig, build_net, derived_seed
from .store import METRICS, metric_column

BETAS, EPS = (0.9, 0.999), 1e-8


@dataclass
class Job:
    """One model to train: its global id, seed and hyper-parameters."""

    model_id: int
    seed: int
    hp: dict


@dataclass
class Result:
    model_id: int
    hp: dict
    weights: dict = field(default_factory=dict)  # checkpoint -> [P] float32 (effective weights)
    buffers: dict = field(default_factory=dict)  # checkpoint -> [Pb] (BatchNorm statistics)
    metrics: dict = field(default_factory=dict)  # table column -> value
    diverged: bool = False
    diverged_epoch: int = -1


@dataclass(frozen=True)
class TrainOptions:
    """How to run the arithmetic (never what is computed): fp32 is the exact reference."""

    device: str = "cpu"
    # bf16: weights are cast once per step from the fp32 master copy and activations stay
    # bf16 end to end (autocast would cast around every fp32-only GroupNorm instead).
    bf16: bool = False
    channels_last: bool = False
    eval_batch: int = 1024
    # cuDNN's default heuristics pick poor kernels for grouped convs with few channels per
    # group; benchmarking once per shape is far faster over a zoo's thousands of steps.
    cudnn_benchmark: bool = True

    def apply(self):
        if self.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = self.cudnn_benchmark


# ------------------------------------------------------------------ shared

def steps_per_epoch(n_train: int, hp: dict) -> int:
    n = max(1, int(round(hp["train_fraction"] * n_train)))
    return math.ceil(n / int(hp["batch_size"]))


SCHEDULES = ("lim2024", "cosine", "constant")


def lr_factor(step, total, warmup, kind):
    """Multiplier of the base lr at optimizer step ``step`` (0-based) of ``total``.

    'lim2024': linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``
    (the paper's recipe); 'cosine': the same warm-up, then half a cosine; 'constant'.
    ``total``/``warmup`` are float64 tensors (one entry per model) and ``kind`` an integer
    tensor of indices into SCHEDULES, all on the training device: no host sync per step."""
    warmup = torch.minimum(warmup, total)
    warm = torch.where(warmup > 0, (step + 1) / warmup.clamp_min(1e-12), torch.ones_like(total))
    frac = ((step - warmup) / (total - warmup).clamp_min(1e-12)).clamp(0, 1)
    decay = torch.where(kind == 0, 1 - frac,
                        torch.where(kind == 1, 0.5 * (1 + torch.cos(math.pi * frac)), torch.ones_like(frac)))
    return torch.where(step < warmup, warm, decay)


def _schedule_tensors(hps, spe, device):
    f64 = dict(dtype=torch.float64, device=device)
    return (torch.tensor([h["epochs"] * spe for h in hps], **f64),
            torch.tensor([h["warmup_epochs"] * spe for h in hps], **f64),
            torch.tensor([SCHEDULES.index(h["schedule"]) for h in hps], device=device))


def smoothed_ce(logits: torch.Tensor, y: torch.Tensor, smoothing) -> torch.Tensor:
    """Cross-entropy with label smoothing, mean over the last batch dim: ``[..., B, K] -> [...]``.

    Same formula as ``F.cross_entropy(label_smoothing=e)``, but ``e`` may differ per model."""
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    smooth = -logp.mean(dim=-1)
    e = torch.as_tensor(smoothing, dtype=logp.dtype, device=logp.device)
    return ((1 - e) * nll + e * smooth).mean(dim=-1)


def _data_gen(job: Job) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(job.seed, "data"))


def _batch(data: ImageData, idx, plan, sl, hp_t, bf16=False):
    """Gather, normalise and augment the images ``idx [M, b]``; ``hp_t`` holds per-model tensors."""
    M, b = idx.shape
    x = data.normalize(data.x_train[idx])  # [M, b, C, H, W]
    x = augment(x.reshape(M * b, *x.shape[2:]), plan["flip"][:, sl].reshape(-1), plan["shift"][:, sl].reshape(-1, 2),
                plan["center"][:, sl].reshape(-1, 2), hp_t["translate"].repeat_interleave(b),
                hp_t["cutout"].repeat_interleave(b))
    return x.view(M, b, *x.shape[1:]), data.y_train[idx]


def _stack_plans(plans, device):
    return {k: torch.stack([p[k] for p in plans]).to(device, non_blocking=True) for k in plans[0]}


def _hp_tensors(hps: list[dict], device) -> dict:
    def t(k, dt=torch.float32):
        return torch.tensor([h[k] for h in hps], dtype=dt, device=device)

    return {"lr": t("lr"), "weight_decay": t("weight_decay"), "label_smoothing": t("label_smoothing"),
            "momentum": t("momentum"), "translate": t("translate", torch.long), "cutout": t("cutout", torch.long)}


# --------------------------------------------------------------- the group

class GroupTrainer:
    """Trains jobs that share batch size, training fraction and optimizer, all at once.

    Models may have different epoch counts: a model that finishes (or diverges) leaves
    the group at the end of its epoch, so nobody computes for it afterwards. Callers
    sort jobs by epochs before grouping so that members finish close together."""

    def __init__(self, cfg: NetConfig, data: ImageData, checkpoints: list, opts: TrainOptions = TrainOptions()):
        self.cfg, self.data, self.opts = cfg, data, opts
        self.ckpt_epochs = [c for c in checkpoints if c != "final"]

    def train(self, jobs: list[Job]) -> list[Result]:
        dev, data = self.opts.device, self.data
        self.opts.apply()
        hp0 = jobs[0].hp
        opt_kind = hp0["optimizer"]
        template = build_net(self.cfg)
        g = GroupState.from_nets(template, [build_net(self.cfg, j.seed) for j in jobs], dev)
        results = {j.model_id: Result(j.model_id, j.hp) for j in jobs}
        active = list(jobs)
        gens = [_data_gen(j) for j in active]
        subsets = [train_subset(gen, len(data.y_train), j.hp["train_fraction"]) for gen, j in zip(gens, active)]
        spe = steps_per_epoch(len(data.y_train), hp0)
        B = int(hp0["batch_size"])
        state = {"m": torch.zeros_like(g.flat.detach()), "v": torch.zeros_like(g.flat.detach())} \
            if opt_kind == "adamw" else {"buf": torch.zeros_like(g.flat.detach())}
        hp_t = _hp_tensors([j.hp for j in active], dev)
        totals, warms, kinds = _schedule_tensors([j.hp for j in active], spe, dev)
        hw = tuple(data.x_train.shape[2:])
        step = 0
        if 0 in self.ckpt_epochs:
            self._record(g, active, subsets, "epoch_0", results, range(len(active)))
        max_epochs = max(j.hp["epochs"] for j in jobs)
        dtype = torch.bfloat16 if self.opts.bf16 else torch.float32
        for epoch in range(max_epochs):
            plan = _stack_plans([epoch_plan(gen, sub, j.hp, hw) for gen, sub, j in zip(gens, subsets, active)], dev)
            bad = torch.zeros(len(active), dtype=torch.bool, device=dev)
            for s in range(spe):
                sl = slice(s * B, (s + 1) * B)
                x, y = _batch(data, plan["order"][:, sl], plan, sl, hp_t)
                logits = g.forward(x, training=True, channels_last=self.opts.channels_last, dtype=dtype)
                loss = smoothed_ce(logits, y, hp_t["label_smoothing"][:, None])
                finite = torch.isfinite(loss)
                bad |= ~finite
                # A model whose loss is not finite gets no gradient from it; its own NaNs stay in
                # its own channels, since no op mixes models.
                torch.where(finite, loss, torch.zeros_like(loss)).sum().backward()
                factor = lr_factor(step, totals, warms, kinds).float()
                self._step(g, state, hp_t, factor, step + 1, opt_kind)
                step += 1
            done_epoch = epoch + 1
            bad = bad.cpu().numpy()
            leaving = []
            for k, j in enumerate(active):
                if bad[k]:
                    results[j.model_id].diverged = True
                    results[j.model_id].diverged_epoch = done_epoch
            # Checkpoints at this epoch (diverged models get every checkpoint they have not reached,
            # with the state they diverged in, so their rows stay complete).
            for ck_epoch in self.ckpt_epochs:
                sel = [k for k, j in enumerate(active) if ck_epoch == done_epoch or (bad[k] and ck_epoch > done_epoch)]
                if sel and ck_epoch > 0:
                    self._record(g, active, subsets, f"epoch_{ck_epoch}", results, sel)
            finals = [k for k, j in enumerate(active) if bad[k] or j.hp["epochs"] == done_epoch]
            if finals:
                self._record(g, active, subsets, "final", results, finals)
                leaving = finals
            if leaving:
                keep = [k for k in range(len(active)) if k not in set(leaving)]
                if not keep:
                    break
                kt = torch.tensor(keep, device=dev)
                g, state = g.subset(kt, state)
                active = [active[k] for k in keep]
                gens = [gens[k] for k in keep]
                subsets = [subsets[k] for k in keep]
                hp_t = {k: v[kt] for k, v in hp_t.items()}
                totals, warms, kinds = totals[kt], warms[kt], kinds[kt]
        return [results[j.model_id] for j in jobs]

    @staticmethod
    @torch.no_grad()
    def _step(g: GroupState, st: dict, hp_t: dict, factor, t: int, kind: str):
        """One optimizer step for every model; the same arithmetic as torch.optim.AdamW / SGD
        (single-tensor path), with the learning rate, weight decay and momentum per model."""
        p, grad = g.flat, g.flat.grad
        lr = (hp_t["lr"] * factor)[g.model_of]
        wd = hp_t["weight_decay"][g.model_of]
        if kind == "adamw":
            p.mul_(1 - lr * wd)
            st["m"].lerp_(grad, 1 - BETAS[0])
            st["v"].mul_(BETAS[1]).addcmul_(grad, grad, value=1 - BETAS[1])
            bc1, bc2 = 1 - BETAS[0] ** t, 1 - BETAS[1] ** t
            denom = (st["v"].sqrt() / math.sqrt(bc2)).add_(EPS)
            p.addcdiv_(st["m"] * (-lr / bc1), denom)
        else:
            d = grad.add(p * wd)
            mom = hp_t["momentum"][g.model_of]
            st["buf"] = d.clone() if t == 1 else st["buf"].mul_(mom).add_(d)
            p.add_(-lr * st["buf"])
        g.flat.grad = None

    @torch.no_grad()
    def _record(self, g: GroupState, active, subsets, ckpt: str, results: dict, sel):
        """Store weights and metrics at checkpoint ``ckpt`` for the active models at positions ``sel``."""
        keep = torch.tensor(list(sel), device=g.flat.device)
        sub, _ = g.subset(keep) if len(sel) != g.M else (g, {})
        w = sub.effective_rows().cpu().numpy()
        bn = sub.bn_rows()
        bn = bn.cpu().numpy() if bn is not None else None
        data = self.data
        dev = g.flat.device
        tr_idx = torch.stack([subsets[k] for k in sel]).to(dev)
        te_idx = torch.arange(len(data.y_test), device=dev).expand(len(sel), -1)
        tr = _evaluate(sub, data.x_train, data.y_train, tr_idx, data, self.opts)
        te = _evaluate(sub, data.x_test, data.y_test, te_idx, data, self.opts)
        for r, k in enumerate(sel):
            res = results[active[k].model_id]
            res.weights[ckpt] = w[r]
            if bn is not None:
                res.buffers[ckpt] = bn[r]
            vals = dict(zip(METRICS, (tr[0][r], tr[1][r], te[0][r], te[1][r])))
            res.metrics.update({metric_column(m, ckpt): float(v) for m, v in vals.items()})


def _evaluate(g: GroupState, X, Y, idx, data: ImageData, opts: TrainOptions):
    """Mean loss (plain cross-entropy) and accuracy of each model on rows ``idx [M, n]`` of X."""
    M, n = idx.shape
    per = max(1, opts.eval_batch * 64 // max(M, 1))
    loss = torch.zeros(M, dtype=torch.float64, device=idx.device)
    correct = torch.zeros(M, dtype=torch.float64, device=idx.device)
    dtype = torch.bfloat16 if opts.bf16 else torch.float32
    for i in range(0, n, per):
        j = idx[:, i:i + per]
        logits = g.forward(data.normalize(X[j]), training=False, channels_last=opts.channels_last,
                           dtype=dtype).float()
        y = Y[j]
        loss += F.cross_entropy(logits.transpose(1, 2), y, reduction="none").double().sum(1)
        correct += (logits.argmax(-1) == y).double().sum(1)
    return (loss / n).cpu().numpy(), (correct / n).cpu().numpy()


# ----------------------------------------------------------- the reference

def train_alone(job: Job, cfg: NetConfig, data: ImageData, checkpoints: list,
                opts: TrainOptions = TrainOptions()) -> Result:
    """Train one model with plain ``nn.Module`` layers and ``torch.optim`` (the reference path)."""
    dev = opts.device
    opts.apply()
    hp = job.hp
    net = build_net(cfg, job.seed).to(dev)
    gen = _data_gen(job)
    subset = train_subset(gen, len(data.y_train), hp["train_fraction"])
    spe = steps_per_epoch(len(data.y_train), hp)
    B = int(hp["batch_size"])
    params = list(net.parameters())
    if hp["optimizer"] == "adamw":
        opt = torch.optim.AdamW(params, lr=hp["lr"], betas=BETAS, eps=EPS, weight_decay=hp["weight_decay"],
                                foreach=False)
    else:
        opt = torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"],
                              foreach=False)
    hp_t = _hp_tensors([hp], dev)
    totals, warms, kinds = _schedule_tensors([hp], spe, "cpu")
    res = Result(job.model_id, hp)
    ckpt_epochs = [c for c in checkpoints if c != "final"]
    layout = Layout.from_module(net)
    hw = tuple(data.x_train.shape[2:])

    def record(ckpt):
        net.eval()
        res.weights[ckpt] = layout.flatten(net.effective_state())
        if layout.buffers:
            res.buffers[ckpt] = layout.flatten_buffers(net.buffer_state())
        vals = []
        for X, Y, idx in ((data.x_train, data.y_train, subset.to(dev)),
                          (data.x_test, data.y_test, torch.arange(len(data.y_test), device=dev))):
            with torch.no_grad():
                logits = torch.cat([net(data.normalize(X[idx[i:i + opts.eval_batch]]))
                                    for i in range(0, len(idx), opts.eval_batch)])
            vals += [F.cross_entropy(logits, Y[idx]).item(), (logits.argmax(1) == Y[idx]).double().mean().item()]
        res.metrics.update({metric_column(m, ckpt): float(v) for m, v in zip(METRICS, (vals[0], vals[1], vals[2], vals[3]))})
        net.train()

    if 0 in ckpt_epochs:
        record("epoch_0")
    step = 0
    for epoch in range(hp["epochs"]):
        plan = _stack_plans([epoch_plan(gen, subset, hp, hw)], dev)
        bad = False
        net.train()
        for s in range(spe):
            sl = slice(s * B, (s + 1) * B)
            x, y = _batch(data, plan["order"][:, sl], plan, sl, hp_t)
            loss = smoothed_ce(net(x[0]), y[0], hp["label_smoothing"])
            finite = bool(torch.isfinite(loss))
            bad |= not finite
            for grp in opt.param_groups:
                grp["lr"] = hp["lr"] * float(lr_factor(step, totals, warms, kinds)[0].float())
            opt.zero_grad(set_to_none=True)
            torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss)).backward()
            opt.step()
            step += 1
        done = epoch + 1
        if bad:
            res.diverged, res.diverged_epoch = True, done
        for ck in ckpt_epochs:
            if ck > 0 and (ck == done or (bad and ck > done)):
                record(f"epoch_{ck}")
        if bad or done == hp["epochs"]:
            record("final")
            break
    return res
