"""``zoo generate``: turn a spec into a sharded weight dataset, resumably.

The work is planned deterministically from the spec: shard ``s`` holds model ids
``[s*models_per_shard, ...)``; inside a shard, models that can share a group share
the hyper-parameters that fix the step structure (batch size, data fraction,
optimizer). The plan (with its group size) is written to ``zoo-plan.json`` first,
so every process that works on the directory, now or after a crash, trains the
same way and so computes bit-for-bit the same models.

Slot refill (the default on CUDA, ``--refill`` elsewhere; ``refill`` in the plan): each
such set of models is one queue, longest first, dealt to ``group size`` lanes, one per slot
(``zoo.generate.train.plan_lanes``: each model to the lane that frees first by epoch count): a
finished model's slot takes the next model of its lane, so the group keeps its shape over
the whole shard -- what a compiled or CUDA-graphed step needs. Models finish one at a time;
whenever a group's worth has finished, and at the end of each queue, they are written
atomically as a part file (any set of ids). A resumed run keeps the valid parts and trains
the models they lack, each in the slot its lane gives it, beside other models than the first
run's. On the CPU the group runs with exact slots (``TrainOptions.exact_slots``): the same
shape at every step, finished slots masked, whole-group evaluations, so every kernel sees
what it saw in the first run and a model's arithmetic cannot depend on its companions: the
resumed zoo equals the uninterrupted one bit for bit, on any CPU and at any thread count (the
CPU's own; another CPU rounds differently in both runs alike). On CUDA it equals it up to
float rounding, which fp32 training can amplify in single models. The CPU default stays
without refill: fixed groups are the cheaper way to the same guarantee there.

Without refill (the CPU default, ``--no-refill``, and plans written before refill
existed, which have no ``refill`` field) each set is sorted by epoch count and cut into fixed
groups, so members finish together and the group shrinks as they do; each
finished group is one part.

When all of a shard's models are in parts, the parts are assembled into the shard
(atomically, in model-id order) and removed. A ``kill -9`` therefore loses at
most the models in flight (with refill: and those finished since the last part,
fewer than a group's worth).
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..console import progress
from ..errors import ZooError
from ..fs import check_writable_dir, is_temp, remove_stale_temp, write_json
from ..layout import Layout
from ..nets import FiGLU, build_net, family
from ..store import (MANIFEST, PLAN, ShardContent, ShardVerifier, build_manifest, check_replaceable,
                     concat_contents, make_splits, open_shard, read_manifest, read_shard, recorded_sha,
                     sha256_file, shard_entry, shard_ids, shard_name, versions, write_shard)
from ..store.lock import lock_dir
from . import images as image_data
from .spec import GROUP_KEYS, ZooSpec, check_image_size, load_spec, spec_from_dict, validate_for_data
from .train import GroupTrainer, Job, TrainOptions, plan_lanes, train_alone
from .train_smallcnn import train_smallcnn_group

PLAN_FORMAT = "metazoo-plan"
#: Group trainers of the architecture families that do not train through the generic ops walk
#: (:class:`~zoo.generate.train.GroupTrainer`): ``arch -> trainer(jobs, cfg, data, checkpoints, device)``.
GROUP_TRAINERS = {"smallcnn": train_smallcnn_group}
PARTS = ".parts"


# ------------------------------------------------------------------ plan

def _by_group_key(spec: ZooSpec, ids) -> tuple[dict, list[list[int]]]:
    """``(hparams by id, ids split by what a group must share)``, in a fixed order."""
    hps = {i: spec.sample_hparams(i) for i in ids}
    keys = GROUP_KEYS + family(spec.net.arch).group_keys
    key = lambda i: tuple(str(hps[i][k]) for k in keys)  # noqa: E731
    return hps, [[i for i in ids if key(i) == k] for k in sorted({key(i) for i in ids})]


def plan_groups(spec: ZooSpec, shard: int, group_size: int) -> list[list[int]]:
    """Deterministic groups of model ids for one shard (the path without refill)."""
    hps, sets = _by_group_key(spec, list(spec.shard_ids(shard)))
    groups = []
    for ids in sets:
        members = sorted(ids, key=lambda i: (hps[i]["epochs"], i))
        groups += [members[j:j + group_size] for j in range(0, len(members), group_size)]
    return groups


def plan_queues(spec: ZooSpec, ids) -> list[list[int]]:
    """Refill queues of a shard's model ids: one per set of models that can share a group,
    longest first, so that the shortest ones finish the queue and the slots run out nearly
    together."""
    hps, sets = _by_group_key(spec, list(ids))
    return [sorted(q, key=lambda i: (-hps[i]["epochs"], i)) for q in sets]


def auto_group_size(spec: ZooSpec, cfg, data, opts: TrainOptions) -> int:
    """The group size to use when the user gives none.

    CPU: grouping pays only at small batches (grouped convolutions lose to plain ones at
    large batch on a CPU; see scripts/bench_generate.py), so the size follows the batch.
    CUDA: as many models as fit in ~60% of the free memory (measured with a probe group),
    at most 256: on an H100, 256 ran no faster than 128 (docs/BENCHMARKS.md)."""
    device = opts.device
    hp = spec.sample_hparams(0)
    batch = int(hp["batch_size"])
    fixed = family(spec.net.arch).group_size
    if fixed is not None:  # a family whose memory is never the limit
        return fixed[1] if device.startswith("cuda") else fixed[0]
    if not device.startswith("cuda"):
        return 1 if batch >= 256 else (4 if batch >= 96 else 8)
    free, _ = torch.cuda.mem_get_info(device)
    probe_hp = {**hp, "epochs": 1, "train_fraction": min(1.0, 2 * batch / len(data.y_train))}

    def peak(m):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        GroupTrainer(cfg, data, ["final"], opts).train([Job(-1 - i, i, probe_hp) for i in range(m)])
        return torch.cuda.max_memory_allocated(device) - base

    # Two probes, so that fixed costs (cuDNN workspaces, data views) are not charged per model.
    per_model = max(1, (peak(16) - peak(8)) / 8)
    torch.cuda.empty_cache()
    return int(max(1, min(256, 0.6 * free / per_model)))


# ------------------------------------------------------------------ state

def read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ZooError(f"{path} is damaged ({type(e).__name__}: {str(e)[:200]}); delete it to start the "
                       "generation afresh") from e
    if not isinstance(d, dict):
        raise ZooError(f"{path} is damaged (a JSON {type(d).__name__}, not an object); delete it to start the "
                       "generation afresh")
    return d


def read_plan(path: Path) -> dict:
    """``zoo-plan.json``, with every field the generation reads checked for its type and range.

    The plan is written by ``zoo generate`` before its first model; one edited or damaged by
    hand is refused naming the key, never half-used."""
    plan = read_json(path)

    def bad(key, allowed):
        v = plan.get(key) if "." not in key else plan.get("spec", {}).get(key.split(".", 1)[1])
        return ZooError(f"{path}: key {key!r} = {str(v)[:80]!r} must be {allowed}; delete {path.name} (and the "
                        ".parts folder) to start the generation afresh")

    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if plan.get("format") != PLAN_FORMAT:
        raise bad("format", f"{PLAN_FORMAT!r}")
    if not isinstance(plan.get("fingerprint"), str):
        raise bad("fingerprint", "a string")
    spec = plan.get("spec")
    if not isinstance(spec, dict):
        raise bad("spec", "an object (the zoo spec)")
    if not isinstance(spec.get("name"), str):
        raise bad("spec.name", "a string")
    for k in ("models", "models_per_shard"):  # models_per_shard may be absent (its default applies)
        if (k == "models" or k in spec) and (not whole(spec.get(k)) or spec[k] < 1):
            raise bad(f"spec.{k}", "a whole number >= 1")
    for k in ("group_size", "num_shards"):
        if not whole(plan.get(k)) or plan[k] < 1:
            raise bad(k, "a whole number >= 1")
    if "refill" in plan and not isinstance(plan["refill"], bool):
        raise bad("refill", "true or false")
    if "cpu_threads" in plan and (not whole(plan["cpu_threads"]) or plan["cpu_threads"] < 1):
        raise bad("cpu_threads", "a whole number >= 1")
    if "data" in plan and not isinstance(plan["data"], (dict, type(None))):
        raise bad("data", "an object")
    return plan


def check_out_dir(out: Path, spec: ZooSpec) -> dict | None:
    """Refuse a directory holding something else; return the existing plan, if any."""
    fp = spec.fingerprint()
    if out.exists() and not out.is_dir():
        raise ZooError(f"--out {out} is a file, not a folder")
    if (out / MANIFEST).exists():
        m = read_json(out / MANIFEST)
        if m.get("spec_fingerprint") != fp:
            raise ZooError(f"{out} already holds a different zoo ({m.get('name')!r}, "
                           f"{m.get('num_models')} models); choose another --out, delete it, or pass --force")
        missing = [s for s in range(spec.num_shards) if not (out / shard_name(s)).exists()]
        if not missing or not (out / PLAN).exists():
            return {"complete": True}
        # A shard was deleted (it was damaged): regenerate it from the plan, then re-seal.
    if (out / PLAN).exists():
        plan = read_plan(out / PLAN)  # its format and fields checked
        if plan["fingerprint"] != fp:
            raise ZooError(f"{out} holds an unfinished generation of a different spec "
                           f"({plan['spec']['name']!r}, {plan['spec']['models']} models); "
                           "resuming it with this spec would mix two zoos. Use the original spec, "
                           "another --out, or delete the directory")
        return plan
    if out.exists() and any(out.iterdir()):
        raise ZooError(f"{out} is not empty and holds no metazoo zoo; choose an empty or new --out directory")
    return None


def _record(path: Path) -> Path:
    """Where the sha256 of a part or shard is recorded when it is written: in ``.parts``,
    which goes away with the generation state once the manifest (holding them) is sealed."""
    return path.with_name(path.name + ".sha256") if path.parent.parent.name == PARTS \
        else path.parent / PARTS / (path.name + ".sha256")


def _part_ids(path: Path) -> tuple[str | None, list[int]]:
    """``(why a finished part cannot be used or None, the model ids it holds)``: it must still
    have the sha256 recorded when it was written, and be readable."""
    sha = recorded_sha(_record(path))
    if sha is None:
        return "no checksum was recorded for it (its writer was killed)", []
    if sha256_file(path) != sha:
        return "it no longer matches the sha256 recorded when it was written (damaged since)", []
    try:
        return None, shard_ids(path)
    except (ZooError, KeyError, OSError) as e:
        return f"it is unreadable ({e})", []


def _part_problem(path: Path, expected_ids) -> str | None:
    """Why a finished part of a fixed group cannot be used (None if it can)."""
    problem, ids = _part_ids(path)
    if problem is None and ids != list(expected_ids):
        return "it holds other models than its group"
    return problem


REFILL_PART = re.compile(r"part-(\d{5,})\.h5")


def _refill_parts(parts_dir: Path, shard_ids, bar, progress: bool) -> tuple[list[Path], set]:
    """The usable parts a refilled shard already has, and the model ids they hold. A part
    that is damaged, unrecorded or holds models of another shard or of an earlier part is
    removed (with its record): its models are queued again."""
    allowed, done, parts = set(shard_ids), set(), []
    if not parts_dir.exists():
        return parts, done
    for path in sorted(p for p in parts_dir.iterdir() if REFILL_PART.fullmatch(p.name)):
        problem, ids = _part_ids(path)
        if problem is None and not set(ids) <= allowed:
            problem = "it holds models of another shard"
        elif problem is None and (set(ids) & done or len(set(ids)) != len(ids)):
            problem = "it holds models another part already has"
        if problem is None:
            parts.append(path)
            done |= set(ids)
            bar.update(len(ids))
            continue
        if progress:
            then = "removed" if problem.startswith("it holds models") else "training its models again"
            bar.write(f"note: {path}: {problem}; {then}")
        path.unlink()
        _record(path).unlink(missing_ok=True)
    return parts, done


def _expected_sha(out: Path, s: int) -> str | None:
    """The sha256 shard ``s`` had when written: its record, else the manifest's entry."""
    sha = recorded_sha(_record(out / shard_name(s)))
    if sha is None and (out / MANIFEST).exists():
        try:
            entries = {e.get("file"): e.get("sha256") for e in read_json(out / MANIFEST).get("shards", [])}
            sha = entries.get(shard_name(s))
        except (ZooError, AttributeError):
            pass
    return sha


def _check_shard(path: Path, expected_ids, sha: str | None = None) -> None:
    """Refuse a written shard that differs from the sha256 it was written with, is unreadable,
    or holds other models. The checksum comes first; a shard nobody recorded one for (copied in
    by hand) is read by open_shard's helper process first, so bytes that make libhdf5 loop are a
    refusal, not a hang (docs/FORMAT.md, Fuzzing)."""
    if sha is not None and sha256_file(path) != sha:
        raise ZooError(f"{path} is corrupt or truncated: it no longer matches the sha256 recorded when it "
                       "was written (damaged since); delete it and rerun to regenerate its models "
                       "(no other shard is affected)")
    try:
        ids = shard_ids(path)
    except (ZooError, KeyError, OSError) as e:
        raise ZooError(f"{path} is corrupt or truncated ({e}); move it away or delete it and rerun to "
                       "regenerate its models (no other shard is affected)") from e
    if ids != list(expected_ids):
        raise ZooError(f"{path} holds models {ids[:1]}..{ids[-1:]} but the plan expects "
                       f"{expected_ids[0]}..{expected_ids[-1]}; it belongs to another zoo")


# --------------------------------------------------------------- contents

def fixed_arrays(template, layout: Layout):
    fixed_values = None
    if layout.fixed_mask is not None:
        fixed_values = np.zeros(layout.num_params, np.float32)
        for name, mod in template.named_modules():
            if getattr(mod, "fixed_mask", None) is not None:
                fixed_values[layout[f"{name}.weight"].slice] = mod.fixed_values.reshape(-1).numpy()
    extra = {f"{n}.mix": m.mix.numpy() for n, m in template.named_modules() if isinstance(m, FiGLU)}
    return fixed_values, extra or None


def results_to_content(results, spec: ZooSpec, cfg, layout, template, attrs) -> ShardContent:
    ckpts = spec.checkpoint_names
    rows = []
    for r in results:
        row = {k: r.hp[k] for k in spec.hparams}
        row["seed"] = spec.model_seed(r.model_id)
        if spec.pair_size > 1:  # which tuple: `zoo analyze lmc` interpolates within it
            row["pair"] = spec.pair_of(r.model_id)
        row.update({k: r.metrics[k] for k in sorted(r.metrics)})
        row["diverged"], row["diverged_epoch"] = r.diverged, r.diverged_epoch
        rows.append(row)
    table = pd.DataFrame(rows)
    fixed_values, extra = fixed_arrays(template, layout)
    return ShardContent(
        ids=np.array([r.model_id for r in results]),
        weights={ck: np.stack([r.weights[ck] for r in results]) for ck in ckpts},
        buffers={ck: np.stack([r.buffers[ck] for r in results]) for ck in ckpts} if layout.buffers else None,
        table=table, layout=layout, fixed_values=fixed_values, extra_fixed=extra, attrs=attrs)


# ---------------------------------------------------------------- generate

def ensure_plan(spec: ZooSpec, out: Path, opts: TrainOptions, group_size: int | None = None,
                progress: bool = False, refill: bool | None = None):
    """Check ``out`` and write its plan if it has none; return ``(plan, data, cfg)``, or
    ``({"complete": True}, None, None)`` when ``out`` already holds the finished zoo.

    ``refill`` (default: on for CUDA, off for the CPU) goes into a new plan; a resumed
    generation keeps its plan's (a plan without the field was written before slot refill
    existed: no refill).

    A function of its own so that a Ray driver can have the plan written once, by one
    task, before any shard task starts (zoo/generate/distributed.py)."""
    plan = check_out_dir(out, spec)
    if plan and plan.get("complete"):
        return plan, None, None
    data = image_data.load(spec.data, opts.device)
    C, K = data.shape[0], data.num_classes
    cfg = validate_for_data(spec, C, K)
    check_image_size(spec, tuple(data.shape[1:]))
    if plan is None:
        gs = group_size or auto_group_size(spec, cfg, data, opts)
        mine = {"format": PLAN_FORMAT, "fingerprint": spec.fingerprint(), "spec": spec.to_dict(),
                # what the generation does: families without refill and groups of one keep fixed groups
                "group_size": gs, "refill": (opts.device.startswith("cuda") if refill is None else refill)
                and family(cfg.arch).refill and gs > 1,
                "num_shards": spec.num_shards, "data": data.describe(),
                "cpu_threads": torch.get_num_threads()}
        # Shard jobs started together race to plan: the first plan on disk wins and every job
        # reads it back, so they all form the same groups.
        try:
            write_json(out / PLAN, mine, exclusive=True)
        except FileExistsError:
            pass
        plan = check_out_dir(out, spec) or mine
    else:
        if group_size is not None and group_size != plan["group_size"] and progress:
            print(f"note: resuming with the plan's group size {plan['group_size']} (not {group_size}), "
                  "so the zoo comes out exactly as it would have uninterrupted")
        planned = bool(plan.get("refill", False))
        if refill is not None and bool(refill) != planned and progress:
            why = "" if "refill" in plan else " (planned by a metazoo without slot refill)"
            print(f"note: resuming {'with' if planned else 'without'} slot refill as planned{why}, "
                  "so the zoo comes out exactly as it would have uninterrupted")
    return plan, data, cfg


def generate(spec, out, *, models: int | None = None, device: str = "cpu", group_size: int | None = None,
             shard: int | None = None, num_shards: int | None = None, progress: bool = True,
             bf16: bool | None = None, channels_last: bool | None = None, reference: bool = False,
             force: bool = False, refill: bool | None = None) -> Path:
    """Generate (or resume) the zoo of ``spec`` into ``out``; return ``out``.

    ``out`` is locked while this runs (zoo/store/lock.py). ``force`` first deletes the zoo or
    unfinished generation ``out`` holds; never a folder holding anything else.

    ``shard``/``num_shards`` make this call one of ``num_shards`` jobs: it does the
    shards ``s`` with ``s % num_shards == shard`` and writes the manifest only if, when
    it ends, every shard of the zoo is on disk (else ``zoo merge`` does it later).
    ``reference=True`` trains one model at a time with plain layers (for benchmarks).
    ``refill`` (default for a new plan: on for CUDA, off for the CPU; a resume follows its
    plan): feed each shard through the group's slots as one queue (see the module
    docstring); off: fixed groups that shrink.
    ``bf16``/``channels_last`` default to on for CUDA (fastest in scripts/bench_generate.py)
    and off for the CPU, where fp32 is the exact reference."""
    if not isinstance(spec, ZooSpec):
        spec = load_spec(spec)
    if models is not None:
        spec = spec.with_models(models)
    out = Path(out)
    if (shard is None) != (num_shards is None):
        raise ZooError("--shard and --num-shards go together")
    if num_shards is not None and not (num_shards >= 1 and 0 <= shard < num_shards):
        raise ZooError(f"--shard {shard} --num-shards {num_shards}: need 0 <= shard < num-shards")
    if group_size is not None and group_size < 1:
        raise ZooError(f"--group-size {group_size}: must be >= 1")
    if force and num_shards is not None:
        raise ZooError("--force cannot be combined with --shard/--num-shards: it would delete the shards other "
                       "jobs are writing; clear the folder once, before starting the jobs")
    check_device(device)

    key = None if num_shards is None else f"shard-{shard}-of-{num_shards}"
    check_writable_dir(out, "--out")
    with lock_dir(out, "zoo generate", key=key):
        if force:
            remove_zoo(out)
        _remove_stale(out, spec, None if num_shards is None else
                      [s for s in range(spec.num_shards) if s % num_shards == shard])
        return _generate_locked(spec, out, device=device, group_size=group_size, shard=shard,
                                num_shards=num_shards, progress=progress, bf16=bf16,
                                channels_last=channels_last, reference=reference, refill=refill)


DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_device(device: str) -> None:
    if not DEVICE.fullmatch(str(device)):
        raise ZooError(f"--device {device!r}: unknown device; use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ZooError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")


_LOCK_INSIDE = re.compile(r"\.metazoo(\.[\w-]+)?\.lock")  # zoo/store/lock.py, when the parent is not writable


def _ours(name: str) -> bool:
    """Names a generation writes into its folder (what --force may delete)."""
    return name in (MANIFEST, PLAN, PARTS) or re.fullmatch(r"shard-\d+\.h5", name) is not None or is_temp(name) \
        or _LOCK_INSIDE.fullmatch(name) is not None


def remove_zoo(out: Path) -> None:
    """--force: delete the zoo or unfinished generation in ``out``; refuse a folder (or
    entries in it) that are not ours, before deleting anything."""
    check_replaceable(out, "--force")
    if not out.exists():
        return
    foreign = sorted(p.name for p in out.iterdir() if not _ours(p.name))
    if foreign:
        raise ZooError(f"{out} holds files metazoo did not write (e.g. {foreign[0]}); --force replaces only "
                       "metazoo's own files: move them away first; nothing was deleted")
    for p in sorted(out.iterdir(), key=lambda p: p.name == MANIFEST, reverse=True):  # manifest first: never
        if _LOCK_INSIDE.fullmatch(p.name):                                            # a manifest over gaps
            continue  # the lock this run holds
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _remove_stale(out: Path, spec: ZooSpec, shards: list[int] | None) -> None:
    """Temporary files of killed runs (called holding the lock: no live writer owns them).
    A shard job removes only those of its own shards: others may be writing theirs."""
    if not out.exists():
        return
    if shards is None:
        remove_stale_temp(out)
        return
    for s in shards:
        remove_stale_temp(out, f"{shard_name(s)}*")
        if (out / PARTS / f"shard-{s:05d}").exists():
            remove_stale_temp(out / PARTS / f"shard-{s:05d}")
        if (out / PARTS).exists():
            remove_stale_temp(out / PARTS, f"{shard_name(s)}*")


def estimate_bytes(spec: ZooSpec, layout: Layout, models: int) -> int:
    """Disk a generation of ``models`` more models needs: their weights and buffers at every
    checkpoint, plus one shard's worth while its parts and the shard itself coexist."""
    per_model = (layout.num_params + layout.num_buffers) * 4 * len(spec.checkpoint_names) + 512
    return per_model * (models + min(models, spec.models_per_shard)) + (1 << 20)


def _generate_locked(spec: ZooSpec, out: Path, *, device, group_size, shard, num_shards, progress, bf16,
                     channels_last, reference, refill) -> Path:
    cuda = device.startswith("cuda")
    opts = TrainOptions(device=device, bf16=cuda if bf16 is None else bf16,
                        channels_last=cuda if channels_last is None else channels_last)
    plan, data, cfg = ensure_plan(spec, out, opts, group_size, progress, refill)
    if plan.get("complete"):
        _check_complete(out)
        if (out / PARTS).exists():  # left by a run killed right after sealing the manifest
            shutil.rmtree(out / PARTS, ignore_errors=True)
        if progress:
            print(f"{out}: zoo already complete ({spec.models} models; shard checksums verified)")
        return out
    gs = int(plan["group_size"])
    # CPU reductions split their work by thread count, and so round differently: every process
    # working on this directory (a resume, a shard job, a Ray task) uses the plan's count, so
    # that they all compute bit-identical models.
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(int(plan.get("cpu_threads", threads)))

    template = build_net(cfg)
    layout = Layout.from_module(template)
    attrs = {"spec": spec.to_dict(), "spec_fingerprint": spec.fingerprint(), "net": cfg.to_dict(),
             "created_by": versions(device), "data": data.describe()}
    mine = [s for s in range(spec.num_shards) if num_shards is None or s % num_shards == shard]
    todo = []
    for s in mine:
        path = out / shard_name(s)
        if path.exists():
            _check_shard(path, list(spec.shard_ids(s)), _expected_sha(out, s))
        else:
            todo.append(s)
    total = sum(len(spec.shard_ids(s)) for s in todo)
    check_writable_dir(out, "--out", need_bytes=estimate_bytes(spec, layout, total))
    bar = model_bar(total, progress, spec.name)
    # as the plan says (ensure_plan already ruled it out for smallcnn zoos and groups of one);
    # one-at-a-time training (a benchmark's) has no slots
    refill = bool(plan.get("refill", False)) and not reference
    if refill and opts.device == "cpu":
        opts = replace(opts, exact_slots=True)
    trainer = GroupTrainer(cfg, data, list(spec.checkpoints), opts)

    def write_part(part: Path, results, t0: float):
        content = results_to_content(results, spec, cfg, layout, template,
                                     {**attrs, "train_seconds": time.perf_counter() - t0})
        write_shard(part, content, record=_record(part))

    try:
        for s in todo:
            parts_dir = out / PARTS / f"shard-{s:05d}"
            if refill:
                parts = _train_shard_refill(spec, s, gs, trainer, parts_dir, write_part, bar, progress)
            else:
                parts = _train_shard_groups(spec, s, gs, cfg, data, opts, trainer, reference, parts_dir,
                                            write_part, bar, progress)
            # Seal only parts that still are what was written (re-read: one may have been
            # damaged while this process trained the others).
            held = []
            for part, group in parts:
                problem, ids = _part_ids(part)
                if problem is None and group is not None and ids != list(group):
                    problem = "it holds other models than its group"
                if problem is not None:
                    raise ZooError(f"{part}: {problem}; rerun to train its models again")
                held += ids
            if sorted(held) != list(spec.shard_ids(s)):  # a refill bug, never a user's doing
                raise ZooError(f"{parts_dir}: the parts hold {len(held)} models, not shard {s}'s "
                               f"{len(spec.shard_ids(s))}; rerun to train the missing ones")
            content = concat_contents([read_shard(p) for p, _ in parts])
            content.attrs = {**attrs, "shard_index": s}
            write_shard(out / shard_name(s), content, record=_record(out / shard_name(s)))
            shutil.rmtree(parts_dir, ignore_errors=True)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    if all((out / shard_name(s)).exists() for s in range(spec.num_shards)):
        write_manifest(out)
    elif progress:
        left = [s for s in range(spec.num_shards) if not (out / shard_name(s)).exists()]
        print(f"{out}: this job's shards are done; {len(left)} shard(s) of the zoo are still missing "
              "(other jobs); run `zoo merge` once they are all written")
    return out


def _train_shard_groups(spec, s, gs, cfg, data, opts, trainer, reference, parts_dir, write_part, bar,
                        progress) -> list[tuple[Path, list[int]]]:
    """Without refill: the shard's fixed groups, one part each (a valid part is kept)."""
    parts = []
    for gi, group in enumerate(plan_groups(spec, s, gs)):
        part = parts_dir / f"group-{gi:05d}.h5"
        parts.append((part, group))
        if part.exists():
            problem = _part_problem(part, group)
            if problem is None:
                bar.update(len(group))
                continue
            if progress:
                bar.write(f"note: {part}: {problem}; training its {len(group)} models again")
        jobs = [Job(i, spec.model_seed(i), spec.sample_hparams(i)) for i in group]
        t0 = time.perf_counter()
        if cfg.arch in GROUP_TRAINERS:
            results = GROUP_TRAINERS[cfg.arch](jobs, cfg, data, list(spec.checkpoints), opts.device)
        elif reference or (gs == 1 and not (opts.bf16 or opts.channels_last)):
            # one at a time: plain layers are never slower than a group of one (the plain
            # path computes in fp32 only: a bf16 or channels-last group of one stays grouped)
            results = [train_alone(j, cfg, data, list(spec.checkpoints), opts) for j in jobs]
        else:
            results = trainer.train(jobs)
        write_part(part, results, t0)
        bar.update(len(group))
    return parts


def _train_shard_refill(spec, s, gs, trainer, parts_dir, write_part, bar,
                        progress) -> list[tuple[Path, None]]:
    """With refill: the models no valid part holds yet, queued per group key through ``gs``
    slots; a part is written whenever ``gs`` models have finished, and at the end of each queue.

    (smallcnn zoos keep fixed groups: their trainer, zoo/generate/train_smallcnn.py, counts optimizer steps
    per group, not per model, so a refilled slot would start Adam mid-count.)"""
    ids = list(spec.shard_ids(s))
    parts, done = _refill_parts(parts_dir, ids, bar, progress)
    n = max((int(REFILL_PART.fullmatch(p.name).group(1)) + 1 for p in parts), default=0)
    finished, t0 = [], time.perf_counter()

    def flush():
        nonlocal n, t0
        part = parts_dir / f"part-{n:05d}.h5"
        write_part(part, finished, t0)
        parts.append(part)
        finished.clear()
        n, t0 = n + 1, time.perf_counter()

    for queue in plan_queues(spec, ids):
        # the lanes of the whole queue, as the first run dealt them, less the finished models
        lanes = plan_lanes([Job(i, spec.model_seed(i), spec.sample_hparams(i)) for i in queue], gs)
        lanes = [[j for j in lane if j.model_id not in done] for lane in lanes]
        if not any(lanes):
            continue
        for result in trainer.stream([], lanes=lanes):
            finished.append(result)
            bar.update(1)
            if len(finished) >= gs:
                flush()
        if finished:  # nothing finished waits in memory through the next queue's training
            flush()
    return [(p, None) for p in parts]


def write_manifest(out: Path) -> dict:
    """Write ``manifest.json`` for a directory whose shards are all written (``zoo merge``)."""
    out = Path(out)
    if not (out / PLAN).exists():
        raise ZooError(f"{out} has no {PLAN}: it is not a zoo being generated")
    plan = read_plan(out / PLAN)

    spec = spec_from_dict(plan["spec"])
    missing = [shard_name(s) for s in range(spec.num_shards) if not (out / shard_name(s)).exists()]
    if missing:
        raise ZooError(f"{out}: {len(missing)} of {spec.num_shards} shards are not written yet "
                       f"(first missing: {missing[0]}); finish the jobs that own them, then merge")
    entries, layout, net = [], None, None
    for s in range(spec.num_shards):
        path = out / shard_name(s)
        sha = _expected_sha(out, s)
        _check_shard(path, list(spec.shard_ids(s)), sha)
        with open_shard(path) as f:
            ids = f["ids"][()]
            if layout is None:
                mask = f["fixed/mask"][()] if "fixed" in f and "mask" in f["fixed"] else None
                layout = Layout.from_json(f.attrs["layout"], mask)
                net = json.loads(f.attrs["net"])
                device = json.loads(f.attrs["created_by"]).get("device")
        entries.append(shard_entry(path, ids, sha))  # sha: as written, checked just above
    all_ids = np.arange(spec.models)
    manifest = build_manifest(name=spec.name, layout=layout, shards=entries, checkpoints=spec.checkpoint_names,
                              splits=make_splits(all_ids, spec.split, spec.seed), spec=spec.to_dict(), net=net,
                              source={"kind": "generated"}, device=device, data=plan.get("data"))
    manifest["spec_fingerprint"] = spec.fingerprint()
    write_json(out / MANIFEST, manifest)
    verifier = ShardVerifier(out)
    for e in entries:
        verifier.remember(e)
    shutil.rmtree(out / PARTS, ignore_errors=True)
    return manifest


def _check_complete(out: Path) -> None:
    """A finished zoo is complete only if its shards still match the manifest."""
    m = read_manifest(out)
    verifier = ShardVerifier(out)
    for e in m["shards"]:
        try:
            verifier.check(e)
        except ZooError as err:
            raise ZooError(f"{out} holds this zoo, but it is damaged: {err}. Delete {e['file']} and rerun "
                           "`zoo generate` to regenerate its models") from None


def model_bar(total: int, enabled: bool, name: str):
    """The progress bar of a generation: models, with models/hour (a zoo takes hours)."""
    return progress(total, enabled=enabled, desc=f"generate {name}", unit="model", per_hour=True, smoothing=0.1)


def progress_of(out: Path) -> dict:
    """How far a (possibly running) generation is, read from finished shards and parts only."""
    out = Path(out)
    plan = read_plan(out / PLAN)
    per = plan["spec"].get("models_per_shard", 1000)
    total = plan["spec"]["models"]
    done = 0
    for s in range(plan["num_shards"]):
        if (out / shard_name(s)).exists():
            done += min(per, total - s * per)
    parts = [p for pattern in ("shard-*/group-*.h5", "shard-*/part-*.h5") for p in (out / PARTS).glob(pattern)] \
        if (out / PARTS).exists() else []
    for p in parts:
        if not (out / shard_name(int(p.parent.name.split("-")[1]))).exists():
            try:
                with open_shard(p) as f:
                    done += len(f["ids"])
            except ZooError:
                pass
    return {"name": plan["spec"]["name"], "models": total, "done": done, "group_size": plan["group_size"],
            "refill": bool(plan.get("refill", False)),
            "shards_total": plan["num_shards"],
            "shards_done": sum((out / shard_name(s)).exists() for s in range(plan["num_shards"]))}
