"""Running a family under hypothesis: the CI slice (fixed seed, few cases) and the campaign
worker (random seeds, many cases) share this, so both judge a case the same way."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hseed

from .core import Case, Finding
from .families import FAMILIES

REGRESSIONS = Path(__file__).resolve().parents[1] / "fuzz_regressions"

settings.register_profile(
    "fuzz-ci", derandomize=True, deadline=None, database=None, print_blob=False,
    suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
settings.register_profile(
    "fuzz-campaign", derandomize=False, deadline=None, database=None, print_blob=False,
    suppress_health_check=list(HealthCheck), phases=[Phase.generate])


@contextlib.contextmanager
def _own_cache_dir():
    """Each case points METAZOO_CACHE_DIR at a fresh folder of its own: put it back afterwards."""
    old = os.environ.get("METAZOO_CACHE_DIR")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("METAZOO_CACHE_DIR", None)
        else:
            os.environ["METAZOO_CACHE_DIR"] = old


def run_plan(name: str, plan, base: Path) -> None:
    """Run one plan of family ``name`` in a fresh sandbox under ``base``."""
    with _own_cache_dir():
        FAMILIES[name].run(plan, Case(base))


def run_hypothesis(name: str, base: Path, *, profile: str, max_examples: int, seed: int | None = None,
                   on_case=None) -> None:
    """Draw ``max_examples`` plans of family ``name`` and run each; raises the first failure."""
    fam = FAMILIES[name]

    @settings(settings.get_profile(profile), max_examples=max_examples)
    @given(plan=fam.strategy)
    def body(plan):
        if on_case is not None:
            on_case(plan)
        fam.run(plan, Case(base))

    if seed is not None:
        body = hseed(seed)(body)
    with _own_cache_dir():
        body()


def plan_id(name: str, plan) -> str:
    return hashlib.sha256(json.dumps([name, plan], sort_keys=True).encode()).hexdigest()[:10]


def keep_finding(name: str, plan, message: str, folder: Path = REGRESSIONS) -> Path:
    """Store a finding as a regression example, replayed by tests/fuzz/test_fuzz.py. A crash or
    hang goes to ``open/``, which is not replayed (it would take the test run down with it)
    until someone has looked at it."""
    if message.startswith("crash"):
        folder = folder / "open"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{plan_id(name, plan)}.json"
    if not path.exists():
        path.write_text(json.dumps({"family": name, "plan": plan, "found": message[:500],
                                    "when": time.strftime("%Y-%m-%d")}, indent=1) + "\n")
    return path


def regression_files(folder: Path = REGRESSIONS) -> list[Path]:
    return sorted(folder.glob("*.json"))


__all__ = ["Finding", "REGRESSIONS", "keep_finding", "plan_id", "regression_files", "run_hypothesis", "run_plan"]
