"""Slot refill, static shapes and the compiled step of the group trainer (GPU_PLAN Z1, Z2, Z5).

Each changes how a group is scheduled or run, never what a model computes: a model comes out
as it does trained alone (and, on the CPU, bit for bit as the plain group path gives it)."""
import dataclasses

import numpy as np
import pytest

from test_train import ARCHS, CFG, assert_same, float64, jobs  # noqa: F401 (float64: a fixture)
from zoo.nets import NetConfig, WAsym
from zoo.train import GroupTrainer, Job, TrainOptions, train_alone

WASYM = NetConfig(width=0.25, in_channels=1, num_classes=10, wasym=WAsym(n_fix=2, n_fix_linear=2))


def six_jobs(**over):
    """Six models, epochs 1-3 in mixed order, so slots free up at different epochs."""
    base = jobs(**over)
    extra = [Job(10 + i, 200 + i, {**base[i].hp, "epochs": e, "lr": base[i].hp["lr"] * 0.7})
             for i, e in enumerate([2, 1])]
    return base + extra


@pytest.mark.exactness
def test_a_zoo_trained_with_slot_refill_equals_each_model_trained_alone(digits, one_thread):
    js = six_jobs(optimizer="sgd", momentum=0.9)
    js[1].hp.update(lr=1e6)  # diverges in epoch 1: its slot (NaN weights, NaN momentum) is refilled
    ckpts = [0, 1, "final"]
    refill = GroupTrainer(WASYM, digits, ckpts).train(js, slots=2)
    assert refill[1].diverged and refill[1].diverged_epoch == 1
    fine = [k for k in range(len(js)) if k != 1]
    alone = [train_alone(js[k], WASYM, digits, ckpts) for k in fine]
    assert_same([refill[k] for k in fine], alone)
    # and what the plain group path (all six at once, shrinking) gives: bit for bit for the
    # models that start in the first slots; a refilled model sits at another slot of another
    # group shape, which may round differently in the last bits
    plain = GroupTrainer(WASYM, digits, ckpts).train(js)
    for k in (0, 1):
        for ck in plain[k].weights:
            assert np.array_equal(refill[k].weights[ck], plain[k].weights[ck], equal_nan=True)
    assert_same([refill[k] for k in fine], [plain[k] for k in fine])


def test_slot_refill_resets_adam_state_and_batchnorm_statistics(digits, one_thread):
    """A refilled slot starts with zeroed Adam moments and step count, and its own BN statistics."""
    cfg, over = ARCHS["batchnorm"]
    js = six_jobs(**over, optimizer="adamw")
    refill = GroupTrainer(cfg, digits, ["final"]).train(js, slots=3)
    plain = GroupTrainer(cfg, digits, ["final"]).train(js)
    # the adamw bound of test_train: Adam amplifies last-bit differences of rounding-level gradients
    assert_same(refill, plain, atol=1e-3, rel=1e-4)
    for r, p in zip(refill, plain):
        np.testing.assert_allclose(r.buffers["final"], p.buffers["final"], atol=1e-4)


def test_static_shapes_give_each_model_its_result_trained_alone(digits, one_thread):
    """Static shapes: the tail batch (674 = 10 x 64 + 34 images) is padded to 64 with weight-0
    images, and finished models stay in their slots masked. Padding changes the summation
    order only: the tight fp32 bound holds."""
    js = jobs(optimizer="sgd", momentum=0.9)
    trainer = GroupTrainer(WASYM, digits, [0, 1, "final"], TrainOptions(static_shapes=True))
    assert trainer.start(js).pad_tail
    group = trainer.train(js)
    alone = [train_alone(j, WASYM, digits, [0, 1, "final"]) for j in js]
    assert_same(group, alone)


def test_static_shapes_keep_batchnorms_short_tail_batch(digits, one_thread):
    """Weight-0 padding would enter BatchNorm's batch statistics: BN nets keep the 34-image
    tail, so the static run computes what the plain group path does."""
    cfg, over = ARCHS["batchnorm"]
    js = jobs(**over, optimizer="sgd", momentum=0.9)
    trainer = GroupTrainer(cfg, digits, ["final"], TrainOptions(static_shapes=True))
    assert not trainer.start(js).pad_tail
    static = trainer.train(js)
    plain = GroupTrainer(cfg, digits, ["final"]).train(js)
    assert_same(static, plain)
    for s, p in zip(static, plain):
        np.testing.assert_allclose(s.buffers["final"], p.buffers["final"], atol=2e-5)


def test_static_group_keeps_its_shape_while_models_finish(digits, one_thread, monkeypatch):
    import zoo.train

    js = jobs(optimizer="sgd", momentum=0.9)  # epochs 3, 2, 3, 1
    seen, real_step = [], zoo.train.GroupRun.step

    def spy(run):
        seen.append(run.M)
        return real_step(run)

    monkeypatch.setattr(zoo.train.GroupRun, "step", spy)
    GroupTrainer(CFG, digits, ["final"], TrainOptions(static_shapes=True)).train(js)
    assert set(seen) == {4}, "static: M never shrinks"
    seen.clear()
    GroupTrainer(CFG, digits, ["final"]).train(js)
    assert set(seen) == {4, 3, 2}, "dynamic: finished models leave"


@pytest.mark.slow  # compiling the group step takes about 3 minutes on a loaded 2-core box
def test_compiled_step_equals_the_eager_step(digits, one_thread):
    """torch.compile(dynamic=False) of the group's forward + loss. Inductor fuses the
    GroupNorm statistics and the loss into reductions summed in another order, so fp32
    results differ by rounding: after 2 epochs (22 SGD steps) of 4 nets, weights agree to
    1e-5 relative (the 2e-5 absolute bound of the group-vs-alone test), as do predictions."""
    js = jobs(optimizer="sgd", momentum=0.9, epochs=2)
    try:
        compiled = GroupTrainer(WASYM, digits, ["final"], TrainOptions(compile=True)).train(js)
    except Exception as e:  # no C compiler or an Inductor limit on this box: say which
        if "compiler" in str(e).lower() or "InductorError" in type(e).__name__:
            pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {str(e)[:200]}")
        raise
    eager = GroupTrainer(WASYM, digits, ["final"], TrainOptions(static_shapes=True)).train(js)
    assert_same(compiled, eager, atol=2e-5, rel=1e-5)


def test_the_group_step_reads_nothing_back_from_the_device(digits, one_thread):
    """No host sync inside a step (GPU_PLAN F2): augmentation, forward + loss and the optimizer
    update each trace as ONE graph (fullgraph: no data-dependent Python branch) with no op
    that reads a value back to the host (.item(), as int(translate.max()) in augment() once
    did). The recording backend only traces, so this runs in seconds."""
    import torch

    from zoo.data import augment, grouped_batch
    from zoo.train import _optimizer_step

    torch._dynamo.reset()
    js = jobs(optimizer="adamw")
    run = GroupTrainer(WASYM, digits, ["final"], TrainOptions(static_shapes=True)).start(js)
    run.start_epoch()
    B, sl = run.B, slice(0, run.B)
    n = len(js) * B
    x = torch.randn(n, 1, 8, 8)
    flat = lambda k: run.plan[k][:, sl].reshape(n, *run.plan[k].shape[2:])  # noqa: E731
    reads = []

    def record(gm, example_inputs):
        reads.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_method"
                     and str(n.target) in ("item", "tolist", "cpu", "numpy", "__bool__"))
        return gm.forward

    strict = dict(fullgraph=True, backend=record, dynamic=False)
    for cutout in (run.cutout, torch.full((n,), 2)):  # group-constant int, or one size per image
        torch.compile(augment, **strict)(x, flat("flip"), flat("shift"), flat("center"), run.translate, cutout)
    for cutout in (run.cutout, torch.full((len(js),), 2)):  # the same for the fused gather (Z3)
        draws = [run.plan[k][:, sl] for k in ("order", "flip", "shift", "center")]
        torch.compile(grouped_batch, **strict)(digits, digits.x_train, *draws, 2, cutout, torch.float32, True)
    batch = {k: v[:, sl] for k, v in run.plan.items()}
    # the step from its draws to the loss: the fused input pipeline (Z3) and the old one
    for fused in (True, False):
        run.opts = dataclasses.replace(run.opts, fused_input=fused)
        per = torch.compile(run._sample_losses, **strict)(run.g.flat, batch, run.hp_t["label_smoothing"][:, None])
        per.sum().backward()
    torch.compile(_optimizer_step, **strict)(run.g, run.state, run.hp_t, torch.ones(len(js)),
                                             torch.ones(len(js), dtype=torch.float64), "adamw", set())
    assert reads == []

    def old_style(x, t):  # the check catches a read-back
        return x + int(t.max())

    torch.compile(old_style, **strict)(x, torch.tensor([1, 2]))
    assert reads == ["item"]


def test_results_stream_out_as_their_models_finish(digits, one_thread, monkeypatch):
    """Slots 3, epochs 3 2 3 | 1 2 1 queued: model 1 finishes after epoch 2 and comes out then,
    while the others still train; every model comes out once."""
    import zoo.train

    js = six_jobs(optimizer="sgd", momentum=0.9)
    steps, real_step = [0], zoo.train.GroupRun.step

    def count(run):
        steps[0] += 1
        return real_step(run)

    monkeypatch.setattr(zoo.train.GroupRun, "step", count)
    stream = GroupTrainer(WASYM, digits, ["final"]).stream(js, slots=3)
    first = next(stream)
    spe = zoo.train.steps_per_epoch(len(digits.y_train), js[0].hp)
    assert first.model_id == 1 and steps[0] == 2 * spe and "test_acc" in first.metrics
    rest = list(stream)
    assert sorted(r.model_id for r in [first] + rest) == sorted(j.model_id for j in js)
    assert steps[0] > 2 * spe


@pytest.mark.exactness
def test_with_exact_slots_a_model_comes_out_bit_for_bit_whoever_shares_its_group(digits, one_thread, monkeypatch):
    """What makes a resumed refilled shard equal the uninterrupted one, on any CPU: with exact
    slots, each model in the slot its lane gives it, the last three jobs trained after the
    first three, or with lanes emptied by finished models (other companions, other models
    finishing beside them, stand-ins in the empty lanes), give identical weights and metrics.
    The group is three slots wide at every step and every evaluation. Evaluation in chunks of
    64 // 3 images (eval_batch=1), so chunking by how many models finish together would show
    in the float64 losses. (Without exact slots this fails on AVX2-only CPUs: a group of two
    rounds otherwise than a group of three, and an evaluation of a subset is such a group.)"""
    import zoo.train

    js = six_jobs(optimizer="adamw")
    trainer = GroupTrainer(WASYM, digits, [0, 1, "final"], TrainOptions(exact_slots=True, eval_batch=1))
    lanes = zoo.train.plan_lanes(js, 3)
    assert sorted(j.model_id for lane in lanes for j in lane) == sorted(j.model_id for j in js)
    assert any(len(lane) > 1 for lane in lanes), "some slot is refilled"
    sizes, real_step, real_eval = [], zoo.train.GroupRun.step, zoo.train._evaluate
    monkeypatch.setattr(zoo.train.GroupRun, "step", lambda run: sizes.append(run.M) or real_step(run))
    monkeypatch.setattr(zoo.train, "_evaluate", lambda g, *a: sizes.append(g.M) or real_eval(g, *a))
    full = {r.model_id: r for r in trainer.stream([], lanes=lanes)}
    assert sorted(full) == sorted(j.model_id for j in js)
    later = [lane[1:] for lane in lanes]                     # each lane's first model finished
    alone = [lane[-1:] if k == 2 else [] for k, lane in enumerate(lanes)]  # one model, two stand-ins
    resumed = [{r.model_id: r for r in trainer.stream([], lanes=ls)} for ls in (later, alone)]
    assert set(sizes) == {3}, "three slots at every step and evaluation"
    assert sorted(resumed[1]) == [lanes[2][-1].model_id], "the stand-ins' results are dropped"
    compared = 0
    for got in resumed:
        for mid, r in got.items():
            f = full[mid]
            assert f.metrics == r.metrics, mid
            for ck in f.weights:
                assert np.array_equal(f.weights[ck], r.weights[ck]), (mid, ck)
            compared += 1
    assert compared == sum(map(len, later)) + 1


def test_lanes_deal_a_longest_first_queue_to_the_slot_that_frees_first():
    """plan_lanes is list scheduling by epoch count: each job to the lane with the fewest
    epochs so far, the lowest slot on a tie; the lanes' loads end within one job's length."""
    from zoo.train import plan_lanes

    epochs = [5, 4, 3, 3, 2, 1, 1]
    js = [Job(i, i, {"epochs": e}) for i, e in enumerate(epochs)]
    lanes = plan_lanes(js, 3)
    assert [[j.model_id for j in lane] for lane in lanes] == [[0, 5, 6], [1, 4], [2, 3]]
    loads = [sum(j.hp["epochs"] for j in lane) for lane in lanes]
    assert max(loads) - min(loads) <= max(epochs)
    assert [[j.model_id for j in lane] for lane in plan_lanes(js[:2], 4)] == [[0], [1], [], []]


def test_static_refill_keeps_the_asked_slots_even_for_a_short_queue(digits, one_thread, monkeypatch):
    """Static shapes: two jobs in four slots still run as a group of four (stand-ins fill it),
    so a shard's short last queue is no second shape to compile; their results are as in the
    dynamic run, and only the real jobs come out."""
    import zoo.train

    js = six_jobs(optimizer="sgd", momentum=0.9)[:2]
    sizes, real_step = [], zoo.train.GroupRun.step
    monkeypatch.setattr(zoo.train.GroupRun, "step", lambda run: sizes.append(run.M) or real_step(run))
    static = GroupTrainer(WASYM, digits, ["final"], TrainOptions(static_shapes=True)).train(js, slots=4)
    assert set(sizes) == {4}
    dynamic = GroupTrainer(WASYM, digits, ["final"]).train(js, slots=4)
    assert [r.model_id for r in static] == [j.model_id for j in js]
    assert_same(static, dynamic)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_streamed_refill_with_two_slots_at_least_equals_each_model_alone_in_float64(digits, float64, one_thread,
                                                                                    optimizer):
    """The refill path of `zoo generate` (stream, exact slots, queue longest first) in float64,
    where rounding cannot hide a difference, against each model trained alone: equal to ~1 ulp
    of the stored float32 weights, with AdamW too."""
    js = sorted(six_jobs(optimizer=optimizer, momentum=0.9), key=lambda j: -j.hp["epochs"])
    ckpts = [0, 1, "final"]
    trainer = GroupTrainer(WASYM, digits, ckpts, TrainOptions(exact_slots=True))
    streamed = {r.model_id: r for r in trainer.stream(js, slots=3)}
    alone = [train_alone(j, WASYM, digits, ckpts) for j in js]
    assert_same([streamed[a.model_id] for a in alone], alone, atol=1e-6, rel=1e-7)


@pytest.mark.exactness
@pytest.mark.parametrize("mode", ["refill+shrink", "refill+static"])
def test_plans_drawn_ahead_in_a_thread_give_the_same_models(digits, one_thread, mode, monkeypatch):
    """TrainOptions.plan_ahead draws the next epoch's data order and augmentation during the
    current epoch, in a background thread. Models come and go between epochs (slot refill;
    shrinking groups, or masked slots with static shapes): every model must still see exactly
    the batches it sees with the plans drawn at each epoch start, so weights, losses and
    accuracies are bit for bit equal; and a plan drawn ahead must really be used."""
    import zoo.train as train

    js = six_jobs(optimizer="adamw")
    base = TrainOptions(static_shapes=mode.endswith("static"))
    used, draw = [], train.epoch_plan

    def counting(gen, subset, hp, hw):
        import threading
        used.append(threading.current_thread().name.startswith("metazoo-plans"))
        return draw(gen, subset, hp, hw)

    monkeypatch.setattr(train, "epoch_plan", counting)
    ahead = GroupTrainer(WASYM, digits, [1, "final"], base).train(js, slots=3)
    n_ahead = sum(used)
    now = GroupTrainer(WASYM, digits, [1, "final"], dataclasses.replace(base, plan_ahead=False)).train(js, slots=3)
    assert n_ahead > 0 and sum(used) == n_ahead, "drawn ahead only with plan_ahead"
    for a, b in zip(ahead, now):
        for ck in b.weights:
            assert np.array_equal(a.weights[ck], b.weights[ck]), f"model {a.model_id} at {ck}"
        assert a.metrics == b.metrics


@pytest.mark.parametrize("arch, graphs", [("wasym", 1), ("batchnorm", 2)])
def test_a_compiled_group_compiles_one_graph_for_the_whole_run(digits, one_thread, monkeypatch, arch, graphs):
    """GPU_PLAN Z1/Z2: with static shapes one compiled graph serves every step of a run,
    the padded tail of each epoch and refilled slots included, for GroupNorm nets; a
    BatchNorm net keeps its short tail batch, a second shape and so a second graph. (A
    tracing backend counts the graphs Dynamo hands over; no Inductor compile.)"""
    import torch

    import zoo.train as train

    cfg = WASYM if arch == "wasym" else ARCHS[arch][0]
    compiled, real = [], torch.compile

    def count(gm, example_inputs):
        compiled.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=count, dynamic=False))
    torch._dynamo.reset()
    js = six_jobs(optimizer="adamw", **ARCHS[arch][1])
    trainer = GroupTrainer(cfg, digits, ["final"], TrainOptions(compile=True))
    run = trainer.start(js[:3])
    assert run.n_tail < run.B and run.pad_tail == (arch == "wasym"), "the epochs end in a short batch"
    trainer.train(js, slots=3)  # 3 epochs, slots refilled after epochs 1 and 2
    torch._dynamo.reset()
    assert len(compiled) == graphs
