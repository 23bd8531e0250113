"""The items of one job shared by spawned worker processes, results in item order.

``zoo analyze --workers`` (pairs, nets) and ``metanets bench --workers`` (a metanet on a zoo)
both need the same thing: a setup done once per process (open a zoo, load data), then items
that depend only on that setup and their own seeds. :func:`map_items` runs them here, or in
``workers`` spawned processes that each run the setup once and take items as they free up;
the results come back in item order, so the caller's output is the serial one — bit for bit
when every process runs one CPU thread, otherwise to float rounding, as any change of thread
count. An item's exception (a ZooError naming a file, say) reaches the caller as is, and the
items not yet started are cancelled.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

import torch

_CTX: dict = {}


def _init(setup, args, threads: int) -> None:
    torch.set_num_threads(threads)
    _CTX["ctx"] = setup(*args)


def _run(item, x):
    return item(_CTX["ctx"], x)


def map_items(setup, args: tuple, item, items, workers: int, *, done=None, ctx=None) -> list:
    """``[item(setup(*args), x) for x in items]``, in this process or in ``workers`` processes.

    ``setup``, ``item`` and ``args`` must pickle (module-level functions, plain data).
    ``done(i, result)``, if given, is called here as item ``i`` finishes (progress bars).
    ``ctx``: this process's setup, when the caller already has it (used only by the serial
    path). Each worker gets ``torch.get_num_threads() // workers`` threads (at least one)."""
    items = list(items)
    workers = min(int(workers), len(items))
    out = [None] * len(items)
    if workers <= 1:
        ctx = setup(*args) if ctx is None else ctx
        for i, x in enumerate(items):
            out[i] = item(ctx, x)
            if done:
                done(i, out[i])
        return out
    threads = max(1, torch.get_num_threads() // workers)
    ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
                             initargs=(setup, args, threads))
    try:
        pending = {ex.submit(_run, item, x): i for i, x in enumerate(items)}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for f in finished:
                i = pending.pop(f)
                out[i] = f.result()  # raises the item's exception
                if done:
                    done(i, out[i])
    except BaseException:
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return out
