"""The HDF5 store: atomic writes, verify, and the reader's views."""
import errno
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import zoo
from zoo import store
from zoo.errors import ZooError
from zoo.layout import Layout
from zoo.nets import NetConfig, WAsym, build_net
from zoo.store import format as store_format


def tiny_zoo(root, n=6, per_shard=3, wasym=True):
    cfg = NetConfig(width=0.25, in_channels=1, num_classes=10,
                    wasym=WAsym(n_fix=2, n_fix_linear=2) if wasym else None)
    nets = [build_net(cfg, seed=i) for i in range(n)]
    lay = Layout.from_module(nets[0])
    fixed = np.zeros(lay.num_params, np.float32)
    if wasym:
        for name, mod in nets[0].named_modules():
            if getattr(mod, "fixed_values", None) is not None:
                fixed[lay[f"{name}.weight"].slice] = mod.fixed_values.reshape(-1).numpy()
    W = np.stack([lay.flatten(net.effective_state()) for net in nets])
    shards = []
    for s in range(0, n, per_shard):
        ids = np.arange(s, min(n, s + per_shard))
        table = pd.DataFrame({"lr": ids * 0.1, "test_acc": ids / 10.0, "diverged": np.zeros(len(ids), bool),
                              "optimizer": ["adamw"] * len(ids)})
        shards.append(store.ShardContent(ids, {"final": W[ids]}, table, lay, fixed_values=fixed if wasym else None))
    store.write_zoo(root, shards, name="tiny", net=cfg.to_dict())
    return W, cfg


@pytest.mark.exactness
def test_reader_gives_table_weights_views_and_layout(tmp_path):
    W, _ = tiny_zoo(tmp_path)
    z = zoo.open(tmp_path)
    assert len(z) == 6 and list(z.table.model_id) == list(range(6))
    assert set(z.table.split) == {"train", "val", "test"}
    assert np.array_equal(z.weights([4, 1]), W[[4, 1]])
    assert np.array_equal(z.weights(), W)
    tr = z.weights([2], trainable_only=True)
    assert tr.shape == (1, z.layout.num_trainable) and np.array_equal(tr[0], W[2][~z.layout.fixed_mask])
    layers = z.layer_weights(3)
    assert layers["conv1.weight"].shape == (4, 1, 3, 3) and layers["fc.weight"].shape == (10, 16)
    per_layer_trainable = z.layer_weights(3, trainable_only=True)
    assert sum(v.numel() for v in per_layer_trainable.values()) == z.layout.num_trainable
    assert "conv1.weight" not in per_layer_trainable, "the 1-channel stem is fully fixed"
    with pytest.raises(ZooError, match="no model with id 99"):
        z.weights([99])
    with pytest.raises(ZooError, match="no checkpoint 'epoch_3'"):
        z.weights([0], checkpoint="epoch_3")


def test_rebuild_returns_a_net_computing_what_the_stored_weights_compute(tmp_path):
    _, cfg = tiny_zoo(tmp_path)
    net = zoo.open(tmp_path).rebuild(4)
    ref = build_net(cfg, seed=4).eval()
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(net(x), ref(x))


def test_verify_passes_a_sound_zoo_and_names_a_corrupted_shard(tmp_path):
    tiny_zoo(tmp_path)
    assert store.verify(tmp_path) == []
    shard = tmp_path / "shard-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = store.verify(tmp_path)
    assert problems and all("shard-00001.h5" in p for p in problems)


def test_a_shard_is_read_by_a_helper_process_before_this_one_and_a_hang_or_crash_there_is_a_refusal(
        tmp_path, monkeypatch):
    """libhdf5 loops forever on some damaged files (the kept fuzz findings shard_bytes-* replay
    real ones): open_shard lets a helper process read the file first, with a deadline. A good
    shard opens as before; a helper that does not answer in time is killed and the shard refused,
    naming it, at once the next time; a helper that dies is a refusal too; a fresh helper
    serves the next file."""
    import time

    from zoo.store import probe

    tiny_zoo(tmp_path)
    shard = tmp_path / "shard-00001.h5"
    with store.open_shard(shard) as f:
        ids = [int(i) for i in f["ids"][()]]
    assert store.shard_ids(shard) == ids and len(ids) > 0

    def prober_running(code):
        monkeypatch.setattr(probe, "_SERVE", code)
        return probe._Prober()

    loops = prober_running("while True: pass")  # what libhdf5 does on those files: burn CPU
    t0 = time.monotonic()
    with pytest.raises(ZooError, match=r"shard-00001\.h5: reading its HDF5 metadata did not finish within "
                                       r"2 s of CPU time"):
        loops.probe(shard, timeout=2)
    assert time.monotonic() - t0 < 60 and loops._proc is None  # killed, not waited for
    t0 = time.monotonic()
    with pytest.raises(ZooError, match=r"did not finish"):
        loops.probe(shard, timeout=2)  # the same bytes: the same verdict, without the wait
    assert time.monotonic() - t0 < 1
    blocked = prober_running("import time; time.sleep(600)")  # no CPU spent: the wall-time backstop
    with pytest.raises(ZooError, match=r"shard-00001\.h5: reading its HDF5 metadata did not finish within \d+ s "):
        blocked.probe(shard, timeout=0.3)
    assert blocked._proc is None
    dies = prober_running("import sys; sys.stderr.write('boom\\n'); sys.exit(7)")
    with pytest.raises(ZooError, match=r"shard-00001\.h5: .*crashed the helper process \(exit code 7: boom\)"):
        dies.probe(shard, timeout=20)
    monkeypatch.undo()
    good = probe._Prober()
    good.probe(shard, timeout=20)
    helper = good._proc
    good.probe(tmp_path / "shard-00000.h5", timeout=20)
    assert good._proc is helper and helper.poll() is None  # one helper serves every file
    good._stop()
    assert helper.poll() is not None


def test_a_looping_helper_whose_parent_is_gone_is_ended_by_the_kernel(tmp_path):
    """A helper whose parent was killed mid-request (zoo verify's child, at its deadline) has
    nobody left to kill it: before each file it limits its own CPU time, so a libhdf5 loop ends
    it (SIGXCPU) instead of spinning forever; it writes no core file."""
    import signal
    import subprocess
    import sys

    code = "from zoo.store.probe import _limit_cpu; _limit_cpu(1)\nwhile True: pass"
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=120, capture_output=True)
    assert run.returncode == -signal.SIGXCPU
    assert not list(tmp_path.iterdir())


def test_every_open_of_a_shard_in_this_process_goes_through_the_helper(tmp_path, monkeypatch):
    """The reader, zoo verify and --no-verify opens all reach libhdf5 through open_shard, and
    open_shard asks the helper first: a shard whose helper read fails is never opened here."""
    from zoo.store import probe

    tiny_zoo(tmp_path)
    asked = []

    def refuse(path, timeout=None):
        asked.append(Path(path).name)
        raise ZooError(f"{path}: refused by the test's helper")

    monkeypatch.setattr(store_format, "probe_shard", refuse)
    for read in (lambda: zoo.open(tmp_path).weights([0]), lambda: zoo.open(tmp_path, verify=False).table,
                 lambda: store.read_shard(tmp_path / "shard-00000.h5")):
        with pytest.raises(ZooError, match="refused by the test's helper"):
            read()
    assert all("refused by the test's helper" in p for p in store.verify(tmp_path))
    assert asked and set(asked) <= {"shard-00000.h5", "shard-00001.h5"}
    assert probe.probe_shard is not refuse  # only open_shard's name was replaced


def test_verify_isolated_turns_a_reader_that_hangs_or_crashes_into_a_problem(tmp_path):
    """A zoo from someone else is verified in a child process: its verdict is verify's; a
    child that does not answer in time is killed, one that dies is reported, and this process
    goes on."""
    import time

    tiny_zoo(tmp_path)
    assert store.verify_isolated(tmp_path) == store.verify(tmp_path) == []
    shard = tmp_path / "shard-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert store.verify_isolated(tmp_path) == store.verify(tmp_path) != []
    t0 = time.monotonic()
    # stand-ins for a shard that makes libhdf5 loop forever, and one that crashes it
    problems = store.verify_isolated(tmp_path, timeout=3, _code="import time; time.sleep(600)")
    assert time.monotonic() - t0 < 60 and len(problems) == 1 and "did not finish within 3 s" in problems[0]
    problems = store.verify_isolated(tmp_path, timeout=60, _code="import os; os.abort()")
    assert len(problems) == 1 and "crashed the verifying process" in problems[0]
    (tmp_path / store.MANIFEST).write_text("{")  # verify's own refusals stay ZooErrors
    with pytest.raises(ZooError, match="manifest"):
        store.verify_isolated(tmp_path)


def test_verify_flags_non_finite_weights_of_a_model_not_marked_diverged(tmp_path):
    W, _ = tiny_zoo(tmp_path, n=3, per_shard=3)
    content = store.read_shard(tmp_path / "shard-00000.h5")
    content.weights["final"][1, 5] = np.nan
    sha = store.write_shard(tmp_path / "shard-00000.h5", content)
    m = store.read_manifest(tmp_path)
    m["shards"][0]["sha256"] = sha
    store.write_json(tmp_path / store.MANIFEST, m)
    assert any("model 1 has non-finite weights" in p for p in store.verify(tmp_path))


def test_a_failed_write_leaves_no_half_written_shard_and_keeps_the_old_one(tmp_path, monkeypatch):
    W, _ = tiny_zoo(tmp_path, n=3, per_shard=3)
    path = tmp_path / "shard-00000.h5"
    before = path.read_bytes()
    content = store.read_shard(path)

    def disk_full(f, c):
        f.create_dataset("ids", data=c.ids)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_format, "_write_contents", disk_full)  # write_shard calls it there
    with pytest.raises(ZooError, match="No space left on device.*nothing was left half-written"):
        store.write_shard(path, content)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_not_a_zoo_and_unknown_schema_are_clear_errors(tmp_path):
    with pytest.raises(ZooError, match="is not a metazoo zoo: no manifest.json"):
        zoo.open(tmp_path)
    tiny_zoo(tmp_path / "z")
    m = store.read_manifest(tmp_path / "z")
    m["schema_version"] = 99
    store.write_json(tmp_path / "z" / store.MANIFEST, m)
    with pytest.raises(ZooError, match="unknown schema version 99"):
        zoo.open(tmp_path / "z")


def test_splits_are_seeded_and_fifty_twenty_five_twenty_five():
    a = store.make_splits(range(100), seed=1)
    b = store.make_splits(range(100), seed=1)
    c = store.make_splits(range(100), seed=2)
    assert a == b and a["train"] != c["train"]
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (50, 25, 25)
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(100))
