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
def test_kept_finding_stays_fixed(kept, tmp_path, one_thread):
    d = json.loads(kept.read_text())
    run_plan(d["family"], d["plan"], tmp_path)
