"""The fuzz suite's fixed slice (issue 21): a few deterministic cases of every reader family,
and every finding a campaign kept, replayed. The long campaign is scripts/fuzz.py."""
import json

import pytest

from fuzz.families import FAMILIES
from fuzz.runner import regression_files, run_hypothesis, run_plan

#: Cases per family in the CI slice: the slow families (a generate resume, a metanet load,
#: an import of ResNet8 records) get fewer; the whole slice stays a few minutes on 2 cores.
CI_CASES = {"plan_parts": 12, "metanet": 15, "import_lim2024": 15, "cli": 20, "spec": 40, "card": 60, "lock": 40,
            "plugin": 40}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fixed_slice(family, tmp_path, one_thread):
    """Fixed seed (derandomized): the same plans on every run, so a failure here reproduces."""
    run_hypothesis(family, tmp_path, profile="fuzz-ci", max_examples=CI_CASES.get(family, 30))


@pytest.mark.parametrize("kept", regression_files(), ids=lambda p: p.stem)
def test_kept_finding_stays_fixed(kept, tmp_path, one_thread, monkeypatch):
    from zoo.store import probe

    # The kept libhdf5 loops (shard_bytes-*) end at the helper's deadline: a shorter one for the
    # replay (the helper reads these KB files in milliseconds, once it has started).
    monkeypatch.setattr(probe, "ISOLATED_BASE_S", 8.0)
    d = json.loads(kept.read_text())
    run_plan(d["family"], d["plan"], tmp_path)


def test_the_kept_libhdf5_hang_is_a_refusal_not_a_hang_in_process_for_verify_and_for_import(
        tmp_path, capsys, monkeypatch):
    """A campaign's finding (tests/fuzz_regressions/shard_bytes-32b20bed82.json): a damaged shard
    whose manifest was rehashed to match makes libhdf5 2.0.0 loop forever. zoo.open (checks on
    or off) and zoo.store.verify in this process, `zoo verify` in its child, and `zoo import` of a
    metazoo archive (which carries its own manifest) all end, naming the shard; nothing is
    imported."""
    import tarfile
    import time
    from pathlib import Path

    import zoo
    from fuzz import families as F
    from fuzz.core import apply_bytes
    from zoo import ZooError, store
    from zoo.cli import main
    from zoo.store import probe

    kept = Path(__file__).parents[1] / "fuzz_regressions" / "shard_bytes-32b20bed82.json"
    plan = json.loads(kept.read_text())["plan"]
    root = tmp_path / "z"
    F.copy_zoo(F.zoo_seed()["root"], root, link=False)
    name = f"shard-{plan['shard']:05d}.h5"
    damaged = apply_bytes((root / name).read_bytes(), plan["bytes"])
    (root / name).unlink()
    (root / name).write_bytes(damaged)
    F._rehash(root, name)  # the forged manifest: checksums match, so HDF5 reads the bytes
    t0 = time.monotonic()
    monkeypatch.setattr(probe, "ISOLATED_BASE_S", 10.0)  # the deadlines, shortened for the test
    problems = store.verify_isolated(root)
    assert problems and time.monotonic() - t0 < 60  # a hang (this libhdf5) or a damaged-file verdict
    monkeypatch.setattr(probe, "ISOLATED_BASE_S", 5.0)
    for read in (lambda: zoo.open(root).table, lambda: zoo.open(root, verify=False).table):
        with pytest.raises(ZooError, match=name):
            read()
    assert store.verify(root) and time.monotonic() - t0 < 90
    archive = tmp_path / "z.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(root, arcname="z")
    code = main(["import", "metazoo", str(archive), "--out", str(tmp_path / "imported")])
    err = capsys.readouterr().err
    assert code != 0 and "failed verification" in err and "Traceback" not in err
    assert not (tmp_path / "imported").exists()
