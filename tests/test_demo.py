"""The demo's zoo side: sizes, parallel single-thread generation, and its errors.

The demo makes each zoo with single-threaded shard jobs of one plan, both zoos at once;
the result must be the zoo a plain one-process ``zoo generate`` makes with one thread and
the same group size, bit for bit.
"""
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, write_toml

import zoo
from metanets import demo
from metanets.errors import MetanetError
from zoo.errors import ZooError
from zoo.generate import generate
from zoo.generate.spec import load_spec, spec_from_dict

# Two zoos of 8 nets in 2 shards of 4: given 6 cores, the demo runs 2 shard jobs per zoo (a job owns whole shards).
SPEC = {**TINY, "models_per_shard": 4}


def test_sizes_put_the_default_zoos_in_out_and_the_others_in_their_own_folders(tmp_path):
    assert [p for _, p in demo.zoo_dirs(tmp_path, "default")] == [tmp_path / "digits-std", tmp_path / "digits-wasym"]
    assert [p for _, p in demo.zoo_dirs(tmp_path, "quick")] == [tmp_path / "quick" / "digits-std",
                                                                 tmp_path / "quick" / "digits-wasym"]
    assert [z for z, _ in demo.zoo_dirs(tmp_path, "full")] == ["digits-resnet8", "digits-wasym-resnet8"]
    # The default demo has the 250 test nets per zoo that the τ interval of ± 0.08 needs.
    for preset, _ in demo.ZOOS:
        spec = load_spec(preset)
        assert spec.models == demo.SIZES["default"]["models"]
        assert round(spec.split[2] * spec.models) >= 250
    assert demo.SIZES["quick"]["models"] < demo.SIZES["default"]["models"] < demo.SIZES["full"]["models"]
    with pytest.raises(MetanetError, match="demo size 'huge' is unknown; allowed: quick, default, full"):
        demo.run_demo(tmp_path, size="huge")


@pytest.mark.exactness
def test_parallel_single_thread_shard_jobs_make_the_one_process_zoo(tmp_path, monkeypatch, one_thread):
    spec_a = write_toml(tmp_path / "a.toml", SPEC)
    spec_b = write_toml(tmp_path / "b.toml", {**SPEC, "name": "tiny-b", "seed": 4})
    monkeypatch.setattr(demo, "_workers", lambda: 6)
    zoos = [(str(spec_a), tmp_path / "demo" / "a"), (str(spec_b), tmp_path / "demo" / "b")]
    timing = demo.generate_zoos(zoos, 8, progress=False)
    assert timing["processes"] == 4 and timing["cpu_s"] > 0
    for spec_file, out in zoos:
        ref = tmp_path / "ref" / out.name
        torch.set_num_threads(1)
        generate(spec_file, ref, models=8, group_size=demo.GROUP_SIZE, progress=False)
        a, b = zoo.open(ref), zoo.open(out)
        pd.testing.assert_frame_equal(a.table, b.table)
        assert np.array_equal(a.weights(), b.weights())
        assert a.manifest == b.manifest
    # A second call reuses the complete zoos and starts no process.
    assert demo.generate_zoos(zoos, 8, progress=False)["processes"] == 0


def test_a_zoo_of_another_size_or_a_failing_generation_is_a_clear_error(tmp_path, one_thread):
    spec = write_toml(tmp_path / "a.toml", SPEC)
    out = tmp_path / "a"
    generate(str(spec), out, models=4, group_size=demo.GROUP_SIZE, progress=False)
    with pytest.raises(MetanetError, match=r"holds a 4-net zoo, but this demo size needs 8"):
        demo.generate_zoos([(str(spec), out)], 8, progress=False)
    with pytest.raises(ZooError, match="no-such-preset"):
        demo.generate_zoos([("no-such-preset", tmp_path / "b")], 8, progress=False)
    # A spec that loads but whose data is missing fails in the generation process: its last line is the error.
    bad = write_toml(tmp_path / "bad.toml", {**SPEC, "data": {"source": f"npz:{tmp_path / 'missing.npz'}"}})
    with pytest.raises(MetanetError, match=r"generating .*bad.toml failed \(exit 2\): .*missing.npz does not exist"):
        demo.generate_zoos([(str(bad), tmp_path / "c")], 8, progress=False)
