"""zoo generate: sharded output, fixed entries, rebuild, kill -9 and resume, refusals."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import zoo
from conftest import kill_generate_after_first_part, write_toml
from zoo import store
from zoo.errors import ZooError
from zoo.generate import generate
from zoo.spec import spec_from_dict
from zoo.train import GroupTrainer



def assert_same_zoo(a: Path, b: Path):
    za, zb = zoo.open(a), zoo.open(b)
    pd.testing.assert_frame_equal(za.table, zb.table)
    for ck in za.checkpoints:
        assert np.array_equal(za.weights(checkpoint=ck), zb.weights(checkpoint=ck)), ck
    assert za.splits == zb.splits


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    from conftest import TINY

    out = tmp_path_factory.mktemp("gen") / "zoo"
    generate(spec_from_dict(TINY), out, group_size=2, progress=False)
    return out


def test_generated_zoo_is_sharded_verified_and_complete(tiny_zoo):
    m = store.read_manifest(tiny_zoo)
    assert [s["file"] for s in m["shards"]] == ["shard-00000.h5", "shard-00001.h5"]
    assert [(s["id_start"], s["id_stop"]) for s in m["shards"]] == [(0, 4), (4, 8)]
    assert store.verify(tiny_zoo) == []
    z = zoo.open(tiny_zoo)
    t = z.table
    assert list(t.model_id) == list(range(8))
    for col in ("lr", "weight_decay", "label_smoothing", "epochs", "test_acc", "train_loss",
                "test_acc@epoch_0", "train_acc@epoch_0", "diverged", "split", "seed"):
        assert col in t, col
    spec = spec_from_dict(m["spec"])
    assert [spec.sample_hparams(i)["lr"] for i in range(8)] == list(t.lr), "stored hparams are the sampled ones"
    assert z.checkpoints == ["epoch_0", "final"]
    assert m["created_by"]["torch"] == torch.__version__ and m["created_by"]["device"] == "cpu"
    with store.open_shard(tiny_zoo / "shard-00000.h5") as f:
        assert f.attrs["schema_version"] == store.SCHEMA_VERSION and "spec" in f.attrs


@pytest.mark.exactness
def test_every_models_fixed_entries_equal_the_stored_fixed_values(tiny_zoo):
    z = zoo.open(tiny_zoo)
    mask = z.layout.fixed_mask
    assert mask is not None and 0 < mask.sum() < len(mask)
    for ck in z.checkpoints:
        W = z.weights(checkpoint=ck)
        assert np.array_equal(W[:, mask], np.broadcast_to(z.fixed_values[mask], (len(W), mask.sum())))
    moved = np.abs(z.weights(checkpoint="final") - z.weights(checkpoint="epoch_0"))[:, ~mask]
    assert (moved.max(axis=1) > 0).all(), "trainable entries did train"


def test_rebuilt_net_reproduces_the_stored_test_accuracy(tiny_zoo, digits):
    z = zoo.open(tiny_zoo)
    for mid in (0, 5):
        net = z.rebuild(mid)
        with torch.no_grad():
            pred = net(digits.normalize(digits.x_test)).argmax(1)
        acc = (pred == digits.y_test).double().mean().item()
        assert acc == z.table.loc[mid, "test_acc"]
        net0 = z.rebuild(mid, checkpoint="epoch_0")
        with torch.no_grad():
            acc0 = (net0(digits.normalize(digits.x_test)).argmax(1) == digits.y_test).double().mean().item()
        assert acc0 == z.table.loc[mid, "test_acc@epoch_0"]


def test_rerunning_a_complete_zoo_changes_nothing(tiny_zoo, tiny_dict):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_zoo.iterdir()}
    generate(spec_from_dict(tiny_dict), tiny_zoo, group_size=2, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_zoo.iterdir()} == before


@pytest.mark.exactness
def test_kill_9_then_resume_gives_the_uninterrupted_zoo_without_retraining(tiny_zoo, tiny_dict, tmp_path,
                                                                          monkeypatch):
    spec_file = write_toml(tmp_path / "spec.toml", tiny_dict)
    out = tmp_path / "killed"
    first_part = kill_generate_after_first_part(spec_file, out, torch.get_num_threads())
    with store.open_shard(first_part) as f:
        finished = set(f["ids"][()].tolist())
    with pytest.raises(ZooError, match="generation seems to be in progress or was interrupted"):
        zoo.open(out)

    trained = []
    real_stream = GroupTrainer.stream

    def spy(self, jobs, slots=None, lanes=None):
        trained.extend(j.model_id for j in jobs + [j for lane in lanes or [] for j in lane])
        return real_stream(self, jobs, slots, lanes)

    monkeypatch.setattr(GroupTrainer, "stream", spy)
    generate(spec_from_dict(tiny_dict), out, progress=False)
    assert finished and not finished & set(trained), "models finished before the kill are not retrained"
    assert sorted(set(trained) | finished) == list(range(8))
    assert not (out / ".parts").exists()
    assert_same_zoo(tiny_zoo, out)


def test_resuming_with_a_different_spec_is_refused(tiny_dict, tmp_path):
    out = tmp_path / "z"
    generate(spec_from_dict(tiny_dict), out, shard=0, num_shards=2, group_size=2, progress=False)
    assert not (out / "manifest.json").exists() and (out / "shard-00000.h5").exists()
    other = spec_from_dict({**tiny_dict, "seed": 99})
    with pytest.raises(ZooError, match="unfinished generation of a different spec"):
        generate(other, out, progress=False)
    with pytest.raises(ZooError, match="already holds a different zoo"):
        generate(other, _complete(tiny_dict, tmp_path / "done"), progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ZooError, match="not empty and holds no metazoo zoo"):
        generate(other, tmp_path / "junk", progress=False)
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"


def _complete(d, out):
    generate(spec_from_dict(d), out, group_size=2, progress=False)
    return out


def test_a_truncated_shard_met_on_resume_is_named_and_left_alone(tiny_dict, tmp_path):
    out = tmp_path / "z"
    generate(spec_from_dict(tiny_dict), out, shard=0, num_shards=2, group_size=2, progress=False)
    shard = out / "shard-00000.h5"
    shard.write_bytes(shard.read_bytes()[:1000])
    truncated = shard.read_bytes()
    with pytest.raises(ZooError, match=r"shard-00000.h5 is corrupt or truncated.*delete it and rerun"):
        generate(spec_from_dict(tiny_dict), out, progress=False)
    assert shard.read_bytes() == truncated


@pytest.mark.exactness
def test_shard_jobs_then_merge_equal_the_single_process_zoo(tiny_zoo, tiny_dict, tmp_path):
    from zoo.generate import write_manifest

    out = tmp_path / "jobs"
    spec = spec_from_dict(tiny_dict)
    generate(spec, out, shard=1, num_shards=2, group_size=2, progress=False)
    with pytest.raises(ZooError, match="1 of 2 shards are not written yet"):
        write_manifest(out)
    generate(spec, out, shard=0, num_shards=2, group_size=2, progress=False)
    assert (out / "manifest.json").exists(), "the last job to finish writes the manifest"
    write_manifest(out)  # `zoo merge` on a finished zoo is harmless
    assert_same_zoo(tiny_zoo, out)


@pytest.mark.exactness
def test_digits_wasym_zoo_of_64_models_generates_verifies_and_summarises(tmp_path):
    from zoo.cli import main

    out = tmp_path / "digits-wasym"
    env_threads = torch.get_num_threads()
    assert main(["generate", "digits-wasym-resnet8", "--out", str(out), "--models", "64", "--quiet"]) == 0
    torch.set_num_threads(env_threads)
    assert main(["verify", str(out)]) == 0
    z = zoo.open(out)
    assert len(z) == 64 and z.layout.num_trainable < z.layout.num_params
    acc = z.table.loc[~z.table.diverged, "test_acc"]
    assert acc.max() - acc.min() > 0.5, "a useful zoo spreads its accuracies widely"
    mask = z.layout.fixed_mask
    W = z.weights()
    assert np.array_equal(W[:, mask], np.broadcast_to(z.fixed_values[mask], (64, mask.sum())))


# ------------------------------------------------------------- slot refill

def refill_dict():
    """Seven models of epochs 2, 1, 2, 1, 3, 2, 2 in one shard, checkpoints at 0, 1 and the end."""
    from conftest import TINY
    import copy

    d = copy.deepcopy(TINY)
    d.update(name="refill-digits", models=7, models_per_shard=7, checkpoints=[0, 1, "final"])
    d["hparams"]["epochs"] = {"dist": "randint", "low": 1, "high": 3}
    # SGD: in fp32 the group-vs-alone bound is tight for GroupNorm nets with SGD on any CPU
    # (Adam amplifies last-bit differences by a CPU-dependent amount; tests/test_group_slots.py
    # checks refill with AdamW in float64)
    d["hparams"].update(optimizer="sgd", momentum=0.9)
    return d


def _plan(out: Path) -> dict:
    import json

    return json.loads((out / store.PLAN).read_text())


@pytest.fixture(scope="module")
def refill_zoos(tmp_path_factory, one_thread):
    """The zoo generated with slot refill and without, in groups of 3, and the group size M of
    every training step of each."""
    import zoo.train

    base = tmp_path_factory.mktemp("refill")
    spec = spec_from_dict(refill_dict())
    sizes, real_step = [], zoo.train.GroupRun.step

    def spy(run):
        sizes.append(run.M)
        return real_step(run)

    zoo.train.GroupRun.step = spy
    try:
        generate(spec, base / "refill", group_size=3, progress=False, refill=True)
        refill_sizes = list(sizes)
        sizes.clear()
        generate(spec, base / "fixed", group_size=3, progress=False, refill=False)
    finally:
        zoo.train.GroupRun.step = real_step
    return spec, base / "refill", base / "fixed", refill_sizes, list(sizes)


def _results(z, ids):
    """A zoo's models as zoo.train.Result-like records (weights and metric columns)."""
    from types import SimpleNamespace

    t = z.table.set_index("model_id")
    return [SimpleNamespace(model_id=i, weights={ck: z.weights(checkpoint=ck)[i] for ck in z.checkpoints},
                            metrics=t.loc[i].to_dict()) for i in ids]


def test_a_refilled_zoo_holds_each_model_as_trained_alone(refill_zoos, digits):
    from test_train import assert_same
    from zoo.spec import validate_for_data
    from zoo.train import Job, train_alone

    spec, refill, fixed, _, _ = refill_zoos
    assert _plan(refill)["refill"] is True and _plan(fixed)["refill"] is False
    zr, zf = zoo.open(refill), zoo.open(fixed)
    assert sorted(set(zr.table.epochs)) == [1, 2, 3] and list(zr.table.model_id) == list(range(7))
    assert store.verify(refill) == []
    cfg = validate_for_data(spec, digits.shape[0], digits.num_classes)
    ids = range(7)
    alone = [train_alone(Job(i, spec.model_seed(i), spec.sample_hparams(i)), cfg, digits, list(spec.checkpoints))
             for i in ids]
    assert_same(_results(zr, ids), alone)
    assert_same(_results(zf, ids), alone)
    hp = list(spec.hparams) + ["seed", "diverged", "diverged_epoch", "split"]
    pd.testing.assert_frame_equal(zr.table[hp], zf.table[hp])


def test_a_refilled_group_keeps_its_shape_while_models_are_queued(refill_zoos, digits):
    """Queue 4 (3 epochs), 0, 2, 5, 6 (2), 1, 3 (1) dealt to 3 lanes: [4 1 3], [0 5], [2 6]
    (each model to the lane that frees first). 0 and 2 finish after epoch 2 (5 and 6 take
    their slots), 4 after epoch 3 (1 takes it), 5, 6 and 1 after epoch 4 (3 takes its lane's
    slot; the other two stay, masked: on the CPU a refilled group keeps its shape to the end,
    exact slots). Without refill the groups [1 3 0] [2 5 6] [4] run 7 group-epochs, down to
    one model at a time."""
    from zoo.train import steps_per_epoch

    spec, _, _, refill_sizes, fixed_sizes = refill_zoos
    spe = steps_per_epoch(len(digits.y_train), spec.sample_hparams(0))
    assert refill_sizes == [3] * 5 * spe
    assert fixed_sizes == [3] * spe + [1] * spe + [3] * 2 * spe + [1] * 3 * spe


class Killed(Exception):
    pass


def generate_killed_after_parts(monkeypatch, spec, out, n_parts, **kw) -> list:
    """Run generate() and stop it (as a kill would) right after its ``n_parts``-th part file of
    finished models is written; the part files written."""
    import zoo.generate as gen

    written, real_write = [], gen.write_shard

    def write_then_die(path, content, record=None):
        sha = real_write(path, content, record=record)
        if path.name.startswith(("part-", "group-")):
            written.append(path)
            if len(written) == n_parts:
                raise Killed
        return sha

    monkeypatch.setattr(gen, "write_shard", write_then_die)
    with pytest.raises(Killed):
        generate(spec, out, progress=False, **kw)
    monkeypatch.setattr(gen, "write_shard", real_write)
    return written


@pytest.mark.exactness
@pytest.mark.parametrize("parts_before_kill", [1, 2])
def test_a_refilled_shard_killed_after_a_part_resumes_to_the_uninterrupted_zoo(refill_zoos, tmp_path, monkeypatch,
                                                                                capsys, parts_before_kill):
    """Killed once 3 (or 6) of the 7 models are in parts: the rerun trains only the other 4
    (or the last one, beside two stand-ins), each in its lane's slot but beside other models
    than in the first run, and writes the same zoo, bit for bit, on any CPU (exact slots:
    zoo/generate.py says why)."""
    import zoo.generate as gen

    spec, refill, _, _, _ = refill_zoos
    out = tmp_path / "z"
    written = generate_killed_after_parts(monkeypatch, spec, out, parts_before_kill, group_size=3, refill=True)
    assert all(p.name.startswith("part-") for p in written)
    finished = set()
    for p in written:
        with store.open_shard(p) as f:
            finished |= set(f["ids"][()].tolist())
    assert len(finished) == 3 * parts_before_kill
    assert gen.progress_of(out)["done"] == len(finished), "`zoo info` counts the models in parts"
    from zoo.cli import main

    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert f"models done {len(finished)} / 7" in info and "group size 3, slot refill" in info

    trained, real_stream = [], GroupTrainer.stream

    def spy(self, jobs, slots=None, lanes=None):
        trained.extend(j.model_id for j in jobs + [j for lane in lanes or [] for j in lane])
        return real_stream(self, jobs, slots, lanes)

    monkeypatch.setattr(GroupTrainer, "stream", spy)
    generate(spec, out, progress=False)
    assert sorted(trained) == sorted(set(range(7)) - finished)
    assert not (out / ".parts").exists()
    assert_same_zoo(refill, out)
    assert store.read_manifest(out)["shards"][0]["sha256"] == store.read_manifest(refill)["shards"][0]["sha256"]


@pytest.mark.exactness
def test_a_generation_planned_before_refill_resumes_in_its_fixed_groups(refill_zoos, tmp_path, monkeypatch,
                                                                        capsys):
    """A plan without the 'refill' field (written by an older metazoo) keeps its fixed groups:
    the finished group's part is kept, the rest are trained in the planned groups, and the zoo
    equals the uninterrupted fixed-group zoo, even when refill is asked for."""
    import json

    spec, _, fixed, _, _ = refill_zoos
    out = tmp_path / "old"
    written = generate_killed_after_parts(monkeypatch, spec, out, 1, group_size=3, refill=False)
    assert [p.name for p in written] == ["group-00000.h5"]
    plan = _plan(out)
    del plan["refill"]
    (out / store.PLAN).write_text(json.dumps(plan))

    trained, real_train = [], GroupTrainer.train
    monkeypatch.setattr(GroupTrainer, "train",
                        lambda self, jobs, slots=None: trained.append([j.model_id for j in jobs])
                        or real_train(self, jobs, slots))
    generate(spec, out, refill=True, progress=True)
    assert "resuming without slot refill as planned (planned by a metazoo without slot refill)" in \
        capsys.readouterr().out
    assert trained == [[2, 5, 6], [4]], "the planned groups after [1 3 0], which was kept"
    assert_same_zoo(fixed, out)


@pytest.mark.exactness
def test_zoo_generate_refill_options_are_documented_and_recorded_in_the_plan(tiny_dict, tmp_path, capsys):
    from zoo.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-refill" in text and "--refill" in text and "slot refill (default on CUDA)" in text
    spec = write_toml(tmp_path / "spec.toml", tiny_dict)
    threads = torch.get_num_threads()
    # on the CPU fixed groups by default (a resume is bit-identical at any thread count)
    for flags, refill in (([], False), (["--refill"], True), (["--no-refill"], False)):
        out = tmp_path / f"z{refill}"
        assert main(["generate", str(spec), "--out", str(out), "--models", "2", "--group-size", "2", "--quiet",
                     *flags]) == 0
        torch.set_num_threads(threads)
        assert _plan(out)["refill"] is refill


def test_bf16_asked_for_is_bf16_even_with_a_group_of_one(tiny_dict, tmp_path):
    """A group of one used to take the plain (fp32-only) path and so silently ignore bf16."""
    d = {**tiny_dict, "models": 2, "models_per_shard": 2}
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    generate(spec_from_dict(d), fp32, group_size=1, progress=False)
    generate(spec_from_dict(d), bf16, group_size=1, progress=False, bf16=True)
    wa, wb = zoo.open(fp32).weights(), zoo.open(bf16).weights()
    assert np.isfinite(wb).all()
    # the same seeds and batches: close, but bf16 rounding moves every trained weight a little
    assert 0 < np.abs(wa - wb).max() < 0.5
