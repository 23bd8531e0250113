"""``zoo generate --ray``: the shards of a zoo as Ray tasks, one GPU each (on CPUs: as many
CPUs as the plan's thread count).

Nothing here trains or writes a model itself: every task is an ordinary
:func:`zoo.generate.generate` call for one shard, so Ray runs inherit what makes
shard jobs safe — the plan fixes the groups, parts and shards are written
atomically, and a rerun resumes from whatever is on disk. The driver only

1. writes the plan once, in a task on the same kind of worker as the shard tasks
   (the automatic group size is measured on the workers' device, not the driver's),
   before any shard task starts, so no two tasks can disagree on the groups;
2. submits one task per shard whose file is missing (a rerun therefore redoes only
   what a lost worker or a killed driver left undone), retrying failed tasks;
3. watches the output directory for progress and writes the manifest at the end.

The output directory must be one path that the driver and every worker see (a shared
filesystem: NFS, Lustre, a cloud mount); docs/SCALE.md has the recipes.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ZooError
from ..store import MANIFEST, PLAN, shard_name
from .run import check_out_dir, ensure_plan, generate, model_bar, progress_of, read_plan, write_manifest
from .spec import ZooSpec, load_spec, spec_from_dict
from .train import TrainOptions

#: Test hook, never set in production: a path; the first shard task that finds no file
#: there creates it and fails, so a test can watch Ray retry a task and the zoo come out
#: unchanged. The driver reads it and hands it to the tasks, so it also reaches workers
#: on other machines.
FAIL_ONCE_ENV = "METAZOO_TEST_FAIL_ONCE"

#: Attempts after the first for a shard task. A task is cheap to retry: it resumes from
#: the groups already written, so a retry costs at most the groups in flight.
MAX_RETRIES = 3

#: Seconds between looks at the output directory for the progress bar.
POLL_SECONDS = 5.0


class InjectedFailure(RuntimeError):
    """The failure the test hook :data:`FAIL_ONCE_ENV` asks for."""


def generate_ray(spec, out, *, address: str | None = None, models: int | None = None,
                 group_size: int | None = None, progress: bool = True, device: str | None = None,
                 refill: bool | None = None) -> Path:
    """Generate (or resume) the zoo of ``spec`` into ``out`` with one Ray task per missing shard.

    ``address`` names a running Ray cluster (``None``: ``ray.init()``'s default, which joins
    the cluster named by ``RAY_ADDRESS`` or one ``ray start``-ed on this machine, else starts a
    local one; if Ray is already initialised in this process, that instance is used and left
    running). ``device`` is ``"cuda"`` (one
    GPU per task), ``"cpu"`` (CPU tasks) or ``None``: cuda if the cluster has GPUs.
    The zoo equals, bit for bit, the one a single ``generate`` call makes on the same kind of
    machine: on CPUs every task computes with the thread count a plain run would use (this
    process's ``torch.get_num_threads()``, or the plan's when resuming) and reserves that many
    CPUs, since CPU reductions round differently with the thread count. ``refill``: as
    :func:`zoo.generate.generate` (it goes into a new plan, which every shard task follows)."""
    try:
        import ray  # deferred: an optional extra (metazoo[ray]), needed only with --ray
    except ImportError as e:
        raise ZooError("--ray needs Ray: pip install 'metazoo[ray]'") from e

    if not isinstance(spec, ZooSpec):
        spec = load_spec(spec)
    if models is not None:
        spec = spec.with_models(models)
    if group_size is not None and group_size < 1:
        raise ZooError(f"--group-size {group_size}: must be >= 1")
    if device not in (None, "cpu", "cuda"):
        raise ZooError(f"device {device!r}: a Ray task gets one device, so use 'cpu', 'cuda' or leave it out")
    # Workers do not share the driver's working directory; they must get the same absolute path.
    out = Path(out).expanduser().resolve()
    # Refuse a directory holding another zoo before starting (or joining) a cluster.
    if (check_out_dir(out, spec) or {}).get("complete"):
        if progress:
            print(f"{out}: zoo already complete ({spec.models} models)")
        return out

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=progress)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        if device is None:
            device = "cuda" if gpus else "cpu"
        if device == "cuda" and not gpus:
            raise ZooError("device 'cuda': the Ray cluster has no GPUs (ray.cluster_resources() lists none)")
        threads = _cpu_threads(ray, out) if device == "cpu" else None
        resources = {"num_gpus": 1} if device == "cuda" else {"num_cpus": threads}
        spec_dict = spec.to_dict()

        plan_task = ray.remote(_plan_task).options(**resources, max_retries=MAX_RETRIES, retry_exceptions=False)
        plan = _get(ray, plan_task.remote(spec_dict, str(out), device, group_size, threads, refill))
        if plan.get("complete"):  # another run finished it meanwhile
            return out
        if not (out / PLAN).exists():
            raise ZooError(f"a Ray worker wrote the plan into {out}, but this driver does not see it there: "
                           "--out must be a directory on a filesystem shared by the driver and every worker")
        if group_size is not None and group_size != plan["group_size"] and progress:
            print(f"note: resuming with the plan's group size {plan['group_size']} (not {group_size}), "
                  "so the zoo comes out exactly as it would have uninterrupted")

        missing = [s for s in range(spec.num_shards) if not (out / shard_name(s)).exists()]
        if device == "cpu":  # a plan that another process wrote first wins: its thread count too
            resources = {"num_cpus": int(plan.get("cpu_threads", threads))}
        shard_task = ray.remote(_shard_task).options(**resources, max_retries=MAX_RETRIES, retry_exceptions=True)
        fail_once = os.environ.get(FAIL_ONCE_ENV)
        pending = {shard_task.remote(spec_dict, str(out), s, device, plan["group_size"], fail_once): s
                   for s in missing}
        failed = _wait_all(ray, pending, out, spec, progress)
    finally:
        if started_here:
            ray.shutdown()
    if failed:
        s, err = failed[0]
        raise ZooError(f"{len(failed)} shard task(s) failed after {MAX_RETRIES} retries (first: "
                       f"{shard_name(s)}: {err}); the other shards are kept: rerun the same command to "
                       "redo only the missing ones") from err

    # A shard task that finds every shard written writes the manifest too; this write is
    # the same content again, and the one that is certain to happen after all of them.
    write_manifest(out)
    if progress:
        print(f"{out}: {len(missing)} shard(s) made by Ray tasks on {device}; {MANIFEST} written")
    return out


def _cpu_threads(ray, out: Path) -> int:
    """The thread count of every CPU task: the plan's when resuming, else what a plain
    ``zoo generate`` in this process would use; refused if no node has that many CPUs."""
    plan = read_plan(out / PLAN) if (out / PLAN).exists() else {}
    threads = int(plan.get("cpu_threads", torch.get_num_threads()))
    # A task that holds fewer CPUs than it computes with would fight the other tasks; one that
    # computed with fewer threads than the plan would make a different zoo: neither is allowed.
    most = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if threads > most:
        where = f"{out}'s plan records" if plan else "this process uses (torch.get_num_threads())"
        raise ZooError(f"a CPU task must compute with {threads} threads, as {where}, so that the zoo equals a "
                       f"run without --ray; but the largest Ray node has {int(most)} CPUs. Use nodes with >= "
                       f"{threads} CPUs" + ("" if plan else f", or set OMP_NUM_THREADS={int(most) or 1} for "
                                            "this command (the zoo then equals a plain run with that many threads)"))
    return threads


def _get(ray, ref):
    """``ray.get`` that hands a user-facing ZooError raised in a task back as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, ZooError):
            raise e.cause from None
        raise


def _wait_all(ray, pending: dict, out: Path, spec, progress: bool) -> list:
    """Wait for every shard task; return ``[(shard, exception)]`` of those that failed for good.

    A failed shard does not stop the others: whatever finishes is kept for the rerun."""
    start = progress_of(out)["done"]
    bar = model_bar(spec.models - start, progress, spec.name)
    failed = []
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS if progress else None)
            for ref in done:
                s = pending.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as e:
                    failed.append((s, e.cause if isinstance(e, ray.exceptions.RayTaskError) else e))
            if progress:
                # Read from finished shards and parts only, as `zoo info` does: never disturbs a writer.
                now = min(spec.models, progress_of(out)["done"]) - start
                if now > bar.n:
                    bar.update(now - bar.n)
    finally:
        bar.close()
    return failed


# ------------------------------------------------------------------- tasks
# Plain functions, wrapped by ray.remote in the driver, so that importing this module
# needs no Ray.

def _plan_task(spec_dict: dict, out: str, device: str, group_size: int | None, threads: int | None,
               refill: bool | None = None) -> dict:
    if threads is not None:
        # Ray starts a worker with OMP_NUM_THREADS set to the CPUs of its first task; the plan
        # records the thread count the driver chose, and generate() in every shard task applies it.
        torch.set_num_threads(threads)
    cuda = device == "cuda"
    # The same options generate() uses on this device: auto group size is measured with them.
    opts = TrainOptions(device=device, bf16=cuda, channels_last=cuda)
    plan, _, _ = ensure_plan(spec_from_dict(spec_dict), Path(out), opts, group_size, refill=refill)
    return plan


def _shard_task(spec_dict: dict, out: str, shard: int, device: str, group_size: int,
                fail_once: str | None) -> int:
    if fail_once:
        try:
            os.close(os.open(fail_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            raise InjectedFailure(f"{FAIL_ONCE_ENV}={fail_once}: shard {shard} fails once, as the test asked")
    spec = spec_from_dict(spec_dict)
    generate(spec, out, shard=shard, num_shards=spec.num_shards, device=device, group_size=group_size,
             progress=False)
    return shard
