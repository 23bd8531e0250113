"""Training zoo members: the group trainer and the one-model-at-a-time reference.

Both paths draw the same random numbers for a model (init from its seed, data order
and augmentation from its own generator), use the same schedule and the same loss,
and differ only in how the arithmetic is batched: the reference uses plain
``nn.Module`` layers and ``torch.optim``; the group runs M models as one wide net
(``zoo.grouped``) with a vectorised optimizer. ``tests/test_train.py`` checks that a
model comes out the same either way.

Entry points: :class:`GroupTrainer` ``.train(jobs, slots=None)`` (whole models, with slot
refill when ``slots`` < len(jobs)), ``.stream(jobs, slots)`` (the same, each result handed out
as soon as its model has finished) and ``.start(jobs)`` (a :class:`GroupRun` to step by hand,
as the benchmarks do); :func:`train_alone` and its stepper :class:`AloneRun`.
:class:`TrainOptions` says how the arithmetic runs (bf16, channels-last, static shapes,
torch.compile), never what is computed.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .data import ImageData, augment, epoch_plan, grouped_batch, train_subset
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
    # Static shapes (GPU_PLAN Z1): every step of a group has the same shapes, so one compiled
    # or CUDA-graphed step serves the whole run. The tail batch of an epoch is padded to the
    # full batch with weight-0 samples (exact for GroupNorm nets, which normalise each image
    # alone; BatchNorm nets keep their short tail batch, a second shape), and a model that
    # finishes with no job left to take its slot stays in it, masked, instead of shrinking
    # the group. Off by default on the CPU: the padded tail sums its loss in another order,
    # so models would differ from earlier zoos in the last bits.
    static_shapes: bool = False
    # torch.compile(dynamic=False) of the group's forward + loss (implies static_shapes).
    compile: bool = False
    # With compile on CUDA: replay forward + backward as CUDA graphs (mode "reduce-overhead"),
    # so a step costs a few launches whatever the depth of the net (GPU_PLAN Z4, in part:
    # the optimizer update stays eager). No effect on the CPU.
    cuda_graphs: bool = False
    # Exact slots: the group keeps the shape it was asked for (``slots``) from the first step to
    # the last, finished slots masked and empty lanes filled with stand-ins, and every
    # checkpoint evaluates the whole group. Every kernel then sees the same shapes in every
    # run, and a model's own slot (its lane, :func:`plan_lanes`) is the same too: its
    # arithmetic cannot depend on which models share the group, on any CPU (a grouped
    # kernel's rounding may depend on the group's size and on the slot's position, as oneDNN's
    # AVX2 kernels do, but never on the other slots' values). This is what lets `zoo
    # generate` resume a refilled shard with whatever models are left and still write the
    # uninterrupted zoo bit for bit. It costs masked slots at the end of a queue and
    # whole-group evaluations.
    exact_slots: bool = False
    # Gather, normalise and augment each batch straight into the group's input layout, one
    # pass (GPU_PLAN Z3; with compile, fused into the compiled step). False: the earlier
    # path (normalise, augment, transpose, cast, layout copy), kept for A/B benchmarks. The
    # inputs are bit for bit the same either way.
    fused_input: bool = True
    # Draw each model's next epoch of data order and augmentation in a background thread while
    # this epoch trains (GPU_PLAN Z3): the draws come from the same per-model generators in the
    # same order, so the plans are the same; the device no longer waits for them at every
    # epoch start. False: drawn at the epoch start (for A/B benchmarks).
    plan_ahead: bool = True

    def apply(self):
        if self.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = self.cudnn_benchmark

    @property
    def static(self) -> bool:
        return self.static_shapes or self.compile


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


def sample_ce(logits: torch.Tensor, y: torch.Tensor, smoothing) -> torch.Tensor:
    """Cross-entropy with label smoothing per sample: ``[..., B, K] -> [..., B]``.

    Same formula as ``F.cross_entropy(label_smoothing=e, reduction="none")``, but ``e`` may
    differ per model."""
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    smooth = -logp.mean(dim=-1)
    e = torch.as_tensor(smoothing, dtype=logp.dtype, device=logp.device)
    return (1 - e) * nll + e * smooth


def batch_mean(per: torch.Tensor, weight=None) -> torch.Tensor:
    """Mean over the last (batch) dim; ``weight [B]`` (0 or 1) marks the real samples of a
    padded batch: the mean is over them."""
    if weight is None:
        return per.mean(dim=-1)
    return (per * weight).sum(dim=-1) / weight.sum()


def smoothed_ce(logits: torch.Tensor, y: torch.Tensor, smoothing, weight=None) -> torch.Tensor:
    """Cross-entropy with label smoothing, mean over the last batch dim: ``[..., B, K] -> [...]``
    (:func:`sample_ce`, then :func:`batch_mean`)."""
    return batch_mean(sample_ce(logits, y, smoothing), weight)


def _data_gen(job: Job) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(job.seed, "data"))


def _batch(data: ImageData, idx, plan, sl, translate: int, cutout):
    """Gather, normalise and augment the images ``idx [M, b]`` (``translate``/``cutout``: see
    :func:`zoo.data.augment`; a per-model ``cutout [M]`` tensor is spread over the images)."""
    M, b = idx.shape
    x = data.normalize(data.x_train[idx])  # [M, b, C, H, W]
    if not isinstance(cutout, int):
        cutout = cutout.repeat_interleave(b)
    x = augment(x.reshape(M * b, *x.shape[2:]), plan["flip"][:, sl].reshape(-1), plan["shift"][:, sl].reshape(-1, 2),
                plan["center"][:, sl].reshape(-1, 2), translate, cutout)
    return x.view(M, b, *x.shape[1:]), data.y_train[idx]


def _aug_sizes(hps: list[dict], device):
    """Host-side augmentation sizes of a group: the translation padding and the cutout side
    (an int when shared by the group, else a per-model tensor)."""
    cut = {int(h["cutout"]) for h in hps}
    cutout = cut.pop() if len(cut) == 1 else torch.tensor([int(h["cutout"]) for h in hps], device=device)
    return max(int(h["translate"]) for h in hps), cutout


def _stack_plans(plans, device):
    return {k: torch.stack([p[k] for p in plans]).to(device, non_blocking=True) for k in plans[0]}


_PLANNER: ThreadPoolExecutor | None = None
_PLANNER_LOCK = threading.Lock()


def _planner() -> ThreadPoolExecutor:
    """The one background thread that draws epoch plans ahead (one at a time, in order)."""
    global _PLANNER
    with _PLANNER_LOCK:
        if _PLANNER is None:
            _PLANNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metazoo-plans")
        return _PLANNER


def _hp_tensors(hps: list[dict], device) -> dict:
    def t(k):
        return torch.tensor([h[k] for h in hps], dtype=torch.get_default_dtype(), device=device)

    return {"lr": t("lr"), "weight_decay": t("weight_decay"), "label_smoothing": t("label_smoothing"),
            "momentum": t("momentum")}


# --------------------------------------------------------------- the group

class GroupRun:
    """M slots of one group training in lock step: one whole step at a time.

    Every slot holds one model (or, in static mode, a finished one masked until the run ends).
    Per-model state lives in ``[M]`` device tensors: hyper-parameters, the lr schedule, the
    optimizer step count (Adam's bias correction), so a step never reads a value back to the
    host. A finished model's slot can take a new job (:meth:`place`): fresh init, zeroed
    optimizer state, its own generator, so the group keeps its shape (GPU_PLAN Z5)."""

    def __init__(self, cfg: NetConfig, data: ImageData, jobs: list[Job], opts: TrainOptions):
        self.cfg, self.data, self.opts = cfg, data, opts
        dev = opts.device
        hp0 = jobs[0].hp
        self.kind = hp0["optimizer"]
        self.spe = steps_per_epoch(len(data.y_train), hp0)
        self.B = int(hp0["batch_size"])
        self.hw = tuple(data.x_train.shape[2:])
        self.dtype = torch.bfloat16 if opts.bf16 else torch.get_default_dtype()
        self.g = GroupState.from_nets(build_net(cfg), [build_net(cfg, j.seed) for j in jobs], dev)
        self.capacity = len(jobs)  # what evaluation chunks are sized for (GroupTrainer.stream)
        flat = self.g.flat.detach()
        self.state = {"m": torch.zeros_like(flat), "v": torch.zeros_like(flat)} if self.kind == "adamw" \
            else {"buf": torch.zeros_like(flat)}
        self.jobs: list[Job | None] = list(jobs)
        self.gens = [_data_gen(j) for j in jobs]
        self.subsets = [train_subset(gen, len(data.y_train), j.hp["train_fraction"]) for gen, j in zip(self.gens, jobs)]
        self.epoch = [0] * len(jobs)  # epochs done, per slot
        self.fresh = set(range(len(jobs)))  # slots whose SGD momentum buffer starts at their next step
        self._set_hp()
        self.steps = torch.zeros(len(jobs), dtype=torch.float64, device=dev)  # optimizer steps taken, per slot
        n = len(self.subsets[0])
        self.n_tail = n - (self.spe - 1) * self.B  # real images in the last batch of an epoch
        # GroupNorm normalises each image alone, so weight-0 padding leaves the real images'
        # gradients as they are; BatchNorm mixes the batch, so it keeps the short tail shape.
        self.pad_tail = opts.static and cfg.norm == "groupnorm" and self.n_tail < self.B
        self._loss = self._compiled_loss() if opts.compile else self._sample_losses
        self.plans_cpu: list[dict | None] = [None] * len(jobs)
        self._ahead = None  # Future of {model_id: (job, plan)}: the next epoch's draws

    @property
    def M(self) -> int:
        return self.g.M

    def _set_hp(self):
        dev = self.opts.device
        hps = [j.hp for j in self.jobs if j is not None]
        # Masked slots keep some finite values: their results are never read.
        filled = [j.hp if j is not None else hps[0] for j in self.jobs]
        self.hp_t = _hp_tensors(filled, dev)
        self.totals, self.warms, self.kinds = _schedule_tensors(filled, self.spe, dev)
        self.translate, self.cutout = _aug_sizes(filled, dev)

    # ---------------------------------------------------------------- slots
    @torch.no_grad()
    def place(self, slot: int, job: Job):
        """Put a new model into ``slot``: fresh init from its seed, zeroed optimizer state."""
        net = build_net(self.cfg, job.seed)
        self.g.write_slot(slot, net)
        for buf in self.state.values():
            for t in self.g.layout.tensors:
                self.g.block(buf, t)[slot].zero_()
        self.jobs[slot] = job
        self.gens[slot] = _data_gen(job)
        self.subsets[slot] = train_subset(self.gens[slot], len(self.data.y_train), job.hp["train_fraction"])
        self.epoch[slot] = 0
        self.fresh.add(slot)
        self.steps[slot] = 0
        self._set_hp()

    def release(self, slot: int):
        """Mark ``slot``'s model as finished: the slot computes on, masked, until refilled."""
        self.jobs[slot] = None

    def keep(self, slots: list[int]):
        """Shrink the group to ``slots`` (dynamic shapes: no compute for finished models)."""
        kt = torch.tensor(slots, device=self.opts.device)
        self.g, self.state = self.g.subset(kt, self.state)
        for name in ("jobs", "gens", "subsets", "epoch", "plans_cpu"):
            setattr(self, name, [getattr(self, name)[k] for k in slots])
        self.fresh = {i for i, k in enumerate(slots) if k in self.fresh}
        self.steps = self.steps[kt]
        self._set_hp()

    # ---------------------------------------------------------------- steps
    def start_epoch(self):
        """This epoch's data order and augmentation for every live slot: drawn ahead during
        the last epoch (``TrainOptions.plan_ahead``) for the models that were in the group
        then, drawn now for the models placed since."""
        ahead = self._ahead.result() if self._ahead is not None else {}
        self._ahead = None
        live = [(k, j) for k, j in enumerate(self.jobs) if j is not None]
        for k, j in live:
            got = ahead.get(j.model_id)
            # the same Job object: a model placed since has a new generator, drawn from here
            self.plans_cpu[k] = got[1] if got is not None and got[0] is j else \
                epoch_plan(self.gens[k], self.subsets[k], j.hp, self.hw)
        if self.opts.plan_ahead:
            # Each generator is touched by one thread at a time: the planner now, the main
            # thread again only at the next start_epoch (after .result()) or never (a model
            # that finishes: its extra draw is dropped; a placed model gets a new generator).
            todo = [(j, self.gens[k], self.subsets[k]) for k, j in live]
            self._ahead = _planner().submit(
                lambda: {j.model_id: (j, epoch_plan(gen, sub, j.hp, self.hw)) for j, gen, sub in todo})
        self.plan = _stack_plans(self.plans_cpu, self.opts.device)
        self.s = 0
        self.bad = torch.zeros(self.M, dtype=torch.bool, device=self.opts.device)

    def _input(self, batch: dict) -> torch.Tensor:
        """The group's input ``[B, M*C, H, W]`` for one step's draws ``batch`` (plan slices
        ``[M, B]``)."""
        cl = self.opts.channels_last
        if self.opts.fused_input:
            return grouped_batch(self.data, self.data.x_train, batch["order"], batch["flip"], batch["shift"],
                                 batch["center"], self.translate, self.cutout, self.dtype, cl)
        x, _ = _batch(self.data, batch["order"], batch, slice(None), self.translate, self.cutout)
        return self.g.layout_input(x, cl, self.dtype)

    def _sample_losses(self, flat, batch, smoothing):
        """Per-sample losses ``[M, B]`` of one step, from its draws (input pipeline included,
        so that a compiled step fuses it too). The mean over the batch is taken outside, so
        a padded tail (weighted mean) runs the same compiled graph as a full step."""
        logits = self.g.forward_input(self._input(batch), training=True, dtype=self.dtype, flat=flat)
        return sample_ce(logits, self.data.y_train[batch["order"]], smoothing)

    def _compiled_loss(self):
        # dynamic=False: static shapes are the point. A GroupNorm group compiles one graph for
        # the whole run (a padded tail has the full shape and the same strides); a BatchNorm
        # tail is a second shape and compiles once more instead of going symbolic (GPU_PLAN F3).
        mode = "reduce-overhead" if self.opts.cuda_graphs else None
        if self.opts.cuda_graphs and self.opts.device.startswith("cuda"):
            # The training images are read inside the graph (the fused input): a graph input
            # at a fixed address, not one copied into the graph's own buffer at every replay.
            torch._dynamo.mark_static_address(self.data.x_train)
        return torch.compile(self._sample_losses, dynamic=False, mode=mode)

    def step(self):
        """One whole training step of every slot (batch ``self.s`` of the epoch)."""
        B, s = self.B, self.s
        batch = {k: v[:, s * B:(s + 1) * B] for k, v in self.plan.items()}
        n, weight = batch["order"].shape[1], None
        if self.pad_tail and n < B:
            # Pad with the epoch's first images (any real images would do) at weight 0.
            batch = {k: torch.cat([v, self.plan[k][:, :B - n]], dim=1) for k, v in batch.items()}
            dev = self.g.flat.device
            weight = torch.cat([torch.ones(n, device=dev), torch.zeros(B - n, device=dev)])
        # contiguous: a full step's slices and a padded tail's copies then have the same
        # strides, which a compiled graph is specialised on
        batch = {k: v.contiguous() for k, v in batch.items()}
        loss = batch_mean(self._loss(self.g.flat, batch, self.hp_t["label_smoothing"][:, None]), weight)
        finite = torch.isfinite(loss)
        self.bad |= ~finite
        # A model whose loss is not finite gets no gradient from it; its own NaNs stay in
        # its own channels, since no op mixes models.
        torch.where(finite, loss, torch.zeros_like(loss)).sum().backward()
        factor = lr_factor(self.steps, self.totals, self.warms, self.kinds).to(torch.get_default_dtype())
        self.steps += 1
        _optimizer_step(self.g, self.state, self.hp_t, factor, self.steps, self.kind, self.fresh)
        self.fresh = set()
        self.s += 1


@torch.no_grad()
def _optimizer_step(g: GroupState, st: dict, hp_t: dict, factor, t, kind: str, fresh: set):
    """One optimizer step for every model; the same arithmetic as torch.optim.AdamW / SGD
    (single-tensor path), with the learning rate, weight decay, momentum and step count
    ``t [M]`` (float64, this step included) per model. ``fresh``: slots taking their first
    SGD step (their momentum buffer starts as the gradient, as torch.optim's does)."""
    p, grad = g.flat, g.flat.grad
    lr_m = hp_t["lr"] * factor
    lr = lr_m[g.model_of]
    wd = hp_t["weight_decay"][g.model_of]
    if kind == "adamw":
        p.mul_(1 - lr * wd)
        st["m"].lerp_(grad, 1 - BETAS[0])
        st["v"].mul_(BETAS[1]).addcmul_(grad, grad, value=1 - BETAS[1])
        # Bias corrections in float64 on the device, rounded to the parameters' dtype as a
        # Python scalar would be.
        bc1 = (1 - BETAS[0] ** t).to(p.dtype)
        sqrt_bc2 = torch.sqrt(1 - BETAS[1] ** t).to(p.dtype)
        denom = (st["v"].sqrt() / sqrt_bc2[g.model_of]).add_(EPS)
        p.addcdiv_(st["m"] * (-lr / bc1[g.model_of]), denom)
    else:
        d = grad.add(p * wd)
        mom = hp_t["momentum"][g.model_of]
        if fresh:
            first = torch.zeros(g.M, dtype=torch.bool, device=p.device)
            first[sorted(fresh)] = True
            st["buf"] = torch.where(first[g.model_of], d, st["buf"] * mom + d)
        else:
            st["buf"].mul_(mom).add_(d)
        p.add_(-lr * st["buf"])
    g.flat.grad = None


def plan_lanes(jobs: list[Job], slots: int) -> list[list[Job]]:
    """Which slot trains which jobs, in which order: ``jobs`` (longest first, as a shard's
    queue is) dealt to ``slots`` lanes, each job to the lane that frees first by epoch count
    (the lowest slot on a tie); with fewer jobs than slots, the last lanes are empty. A lane whose model diverges early starts its next one early;
    it never takes another lane's jobs, so each model's slot is known before training starts
    and is the same in a resumed run (``TrainOptions.exact_slots``)."""
    lanes: list[list[Job]] = [[] for _ in range(max(1, slots))]
    slots = len(lanes)
    free = [0] * slots
    for j in jobs:
        k = min(range(slots), key=lambda i: (free[i], i))
        lanes[k].append(j)
        free[k] += int(j.hp["epochs"])
    return lanes


class GroupTrainer:
    """Trains jobs that share batch size, training fraction and optimizer, all at once.

    Models may have different epoch counts. With ``slots`` below the number of jobs, the
    first ``slots`` jobs start and each later one takes the slot of a model that finished in
    its lane (slot refill, :func:`plan_lanes`): the group keeps its shape for the whole queue.
    A model that finishes with nothing left in its lane leaves the group at the end of its
    epoch (or, with static shapes or exact slots, stays in its slot, masked). Either way each
    model's result equals it trained alone."""

    def __init__(self, cfg: NetConfig, data: ImageData, checkpoints: list, opts: TrainOptions = TrainOptions()):
        self.cfg, self.data, self.opts = cfg, data, opts
        self.ckpt_epochs = [c for c in checkpoints if c != "final"]

    def start(self, jobs: list[Job]) -> GroupRun:
        """A run of ``jobs`` (one per slot), for benchmarks that time single steps."""
        self.opts.apply()
        return GroupRun(self.cfg, self.data, jobs, self.opts)

    def train(self, jobs: list[Job], slots: int | None = None) -> list[Result]:
        """Train ``jobs``; their results in the order of ``jobs``."""
        results = {r.model_id: r for r in self.stream(jobs, slots)}
        return [results[j.model_id] for j in jobs]

    def stream(self, jobs: list[Job], slots: int | None = None,
               lanes: list[list[Job]] | None = None) -> Iterator[Result]:
        """Train ``jobs`` in ``slots`` slots (default: all at once), yielding each model's
        result as soon as it has finished (its final checkpoint recorded), in finishing order:
        a caller can store finished models while the others train (``zoo generate`` writes a
        part file whenever a group's worth has finished).

        Slot ``k`` trains the jobs of lane ``k`` one after another: ``lanes`` as given (a
        resumed shard passes its planned lanes less the finished models; a lane may be
        empty), else :func:`plan_lanes` of ``jobs``."""
        if lanes is None:
            lanes = plan_lanes(jobs, slots or len(jobs))
        queues = [list(lane) for lane in lanes]
        jobs = [j for lane in queues for j in lane]
        if not jobs:
            return
        ours = {j.model_id for j in jobs}
        fixed = self.opts.static or self.opts.exact_slots
        if not fixed:  # nothing depends on a slot's position: empty lanes are dropped
            queues = [q for q in queues if q]
        # An empty lane of a fixed-shape group (static shapes: a short queue would be a second
        # shape to compile; exact slots: the shape and each model's slot are the point) holds a
        # stand-in, a copy of the first job under an id no job has; its result is dropped.
        stand_ins = []
        for q in queues:
            if not q:
                stand_ins.append(Job(min(ours) - 1 - len(stand_ins), jobs[0].seed, jobs[0].hp))
                q.append(stand_ins[-1])
        run = self.start([q.pop(0) for q in queues])
        # Evaluation chunks are sized by the slots asked for, not by how many models a
        # checkpoint records or how many jobs were left: a model's float64 loss then sums in
        # the same order whoever finishes beside it.
        run.capacity = len(lanes)
        results = {j.model_id: Result(j.model_id, j.hp) for j in jobs + stand_ins}
        if 0 in self.ckpt_epochs:
            self._record(run, "epoch_0", results, range(run.M))
        while any(j is not None for j in run.jobs):
            run.start_epoch()
            for _ in range(run.spe):
                run.step()
            bad = run.bad.cpu().numpy()  # the one host sync of an epoch
            live = [k for k, j in enumerate(run.jobs) if j is not None]
            for k in live:
                run.epoch[k] += 1
                if bad[k]:
                    results[run.jobs[k].model_id].diverged = True
                    results[run.jobs[k].model_id].diverged_epoch = run.epoch[k]
            # Checkpoints at this epoch (diverged models get every checkpoint they have not reached,
            # with the state they diverged in, so their rows stay complete).
            for ck in self.ckpt_epochs:
                sel = [k for k in live if ck == run.epoch[k] or (bad[k] and ck > run.epoch[k])]
                if sel and ck > 0:
                    self._record(run, f"epoch_{ck}", results, sel)
            finals = [k for k in live if bad[k] or run.jobs[k].hp["epochs"] == run.epoch[k]]
            if not finals:
                continue
            self._record(run, "final", results, finals)
            # handed out and forgotten: the stream keeps only the weights of models in flight
            done = [r for r in (results.pop(run.jobs[k].model_id) for k in finals) if r.model_id in ours]
            for k in finals:
                run.release(k)
            placed = [k for k in finals if queues[k]]
            for k in placed:
                run.place(k, queues[k].pop(0))
            if placed and 0 in self.ckpt_epochs:
                self._record(run, "epoch_0", results, placed)
            if not fixed:
                # dynamic shapes: finished slots with nothing left in their lane leave the group
                keep = [k for k, j in enumerate(run.jobs) if j is not None]
                if keep and len(keep) < run.M:
                    run.keep(keep)
                    queues = [queues[k] for k in keep]
            yield from done

    @torch.no_grad()
    def _record(self, run: GroupRun, ckpt: str, results: dict, sel):
        """Store weights and metrics at checkpoint ``ckpt`` for the models in slots ``sel``."""
        sel = list(sel)
        g = run.g
        # Exact slots evaluate the whole group (a subset would be a group of another size,
        # which some CPUs round differently); otherwise only the models that record.
        rows = list(range(g.M)) if self.opts.exact_slots else sel
        sub, _ = g.subset(torch.tensor(rows, device=g.flat.device)) if len(rows) != g.M else (g, {})
        w = sub.effective_rows().cpu().numpy()
        bn = sub.bn_rows()
        bn = bn.cpu().numpy() if bn is not None else None
        data = self.data
        dev = g.flat.device
        tr_idx = torch.stack([run.subsets[k] for k in rows]).to(dev)
        te_idx = torch.arange(len(data.y_test), device=dev).expand(len(rows), -1)
        tr = _evaluate(sub, data.x_train, data.y_train, tr_idx, data, self.opts, run.capacity)
        te = _evaluate(sub, data.x_test, data.y_test, te_idx, data, self.opts, run.capacity)
        for k in sel:
            r = rows.index(k)
            res = results[run.jobs[k].model_id]
            res.weights[ckpt] = w[r]
            if bn is not None:
                res.buffers[ckpt] = bn[r]
            vals = dict(zip(METRICS, (tr[0][r], tr[1][r], te[0][r], te[1][r])))
            res.metrics.update({metric_column(m, ckpt): float(v) for m, v in vals.items()})


def _evaluate(g: GroupState, X, Y, idx, data: ImageData, opts: TrainOptions, capacity: int):
    """Mean loss (plain cross-entropy) and accuracy of each model on rows ``idx [M, n]`` of X,
    in chunks sized for a group of ``capacity`` models."""
    M, n = idx.shape
    per = max(1, opts.eval_batch * 64 // max(capacity, 1))
    loss = torch.zeros(M, dtype=torch.float64, device=idx.device)
    correct = torch.zeros(M, dtype=torch.float64, device=idx.device)
    dtype = torch.bfloat16 if opts.bf16 else torch.get_default_dtype()
    for i in range(0, n, per):
        j = idx[:, i:i + per]
        if opts.fused_input:
            h = grouped_batch(data, X, j, dtype=dtype, channels_last=opts.channels_last)
        else:
            h = g.layout_input(data.normalize(X[j]), opts.channels_last, dtype)
        logits = g.forward_input(h, training=False, dtype=dtype)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        y = Y[j]
        loss += F.cross_entropy(logits.transpose(1, 2), y, reduction="none").double().sum(1)
        correct += (logits.argmax(-1) == y).double().sum(1)
    return (loss / n).cpu().numpy(), (correct / n).cpu().numpy()


# ----------------------------------------------------------- the reference

class AloneRun:
    """One model with plain ``nn.Module`` layers and ``torch.optim``, one step at a time
    (the reference path, R0 in docs/BENCHMARKS.md)."""

    def __init__(self, job: Job, cfg: NetConfig, data: ImageData, opts: TrainOptions):
        dev = opts.device
        opts.apply()
        self.job, self.data, self.opts = job, data, opts
        hp = self.hp = job.hp
        self.net = build_net(cfg, job.seed).to(dev)
        self.gen = _data_gen(job)
        self.subset = train_subset(self.gen, len(data.y_train), hp["train_fraction"])
        self.spe = steps_per_epoch(len(data.y_train), hp)
        self.B = int(hp["batch_size"])
        params = list(self.net.parameters())
        if hp["optimizer"] == "adamw":
            self.opt = torch.optim.AdamW(params, lr=hp["lr"], betas=BETAS, eps=EPS, weight_decay=hp["weight_decay"],
                                         foreach=False)
        else:
            self.opt = torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"],
                                       weight_decay=hp["weight_decay"], foreach=False)
        self.totals, self.warms, self.kinds = _schedule_tensors([hp], self.spe, "cpu")
        self.translate, self.cutout = _aug_sizes([hp], dev)
        self.hw = tuple(data.x_train.shape[2:])
        self.steps = 0

    def start_epoch(self):
        self.plan = _stack_plans([epoch_plan(self.gen, self.subset, self.hp, self.hw)], self.opts.device)
        self.s = 0
        self.bad = False

    def step(self):
        hp, B = self.hp, self.B
        sl = slice(self.s * B, (self.s + 1) * B)
        x, y = _batch(self.data, self.plan["order"][:, sl], self.plan, sl, self.translate, self.cutout)
        loss = smoothed_ce(self.net(x[0]), y[0], hp["label_smoothing"])
        finite = bool(torch.isfinite(loss))
        self.bad |= not finite
        for grp in self.opt.param_groups:
            grp["lr"] = hp["lr"] * float(lr_factor(self.steps, self.totals, self.warms, self.kinds)[0].float())
        self.opt.zero_grad(set_to_none=True)
        torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss)).backward()
        self.opt.step()
        self.steps += 1
        self.s += 1


def train_alone(job: Job, cfg: NetConfig, data: ImageData, checkpoints: list,
                opts: TrainOptions = TrainOptions()) -> Result:
    """Train one model with plain ``nn.Module`` layers and ``torch.optim`` (the reference path)."""
    run = AloneRun(job, cfg, data, opts)
    net, hp, dev = run.net, job.hp, opts.device
    res = Result(job.model_id, hp)
    ckpt_epochs = [c for c in checkpoints if c != "final"]
    layout = Layout.from_module(net)

    def record(ckpt):
        net.eval()
        res.weights[ckpt] = layout.flatten(net.effective_state())
        if layout.buffers:
            res.buffers[ckpt] = layout.flatten_buffers(net.buffer_state())
        vals = []
        for X, Y, idx in ((data.x_train, data.y_train, run.subset.to(dev)),
                          (data.x_test, data.y_test, torch.arange(len(data.y_test), device=dev))):
            with torch.no_grad():
                logits = torch.cat([net(data.normalize(X[idx[i:i + opts.eval_batch]]))
                                    for i in range(0, len(idx), opts.eval_batch)])
            vals += [F.cross_entropy(logits, Y[idx]).item(), (logits.argmax(1) == Y[idx]).double().mean().item()]
        res.metrics.update({metric_column(m, ckpt): float(v) for m, v in zip(METRICS, vals)})
        net.train()

    if 0 in ckpt_epochs:
        record("epoch_0")
    for epoch in range(hp["epochs"]):
        run.start_epoch()
        net.train()
        for _ in range(run.spe):
            run.step()
        done = epoch + 1
        if run.bad:
            res.diverged, res.diverged_epoch = True, done
        for ck in ckpt_epochs:
            if ck > 0 and (ck == done or (run.bad and ck > done)):
                record(f"epoch_{ck}")
        if run.bad or done == hp["epochs"]:
            record("final")
            break
    return res
