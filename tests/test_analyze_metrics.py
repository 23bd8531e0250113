"""Curve metrics of `zoo analyze` on curves computed by hand."""
import math

import numpy as np
import pytest

from zoo.analyze import metrics

A5 = np.linspace(0, 1, 5)  # h = 1/4


def test_the_three_barriers_differ_as_defined():
    # endpoints 0 and 2: endpoint mean 1, chord 0, .5, 1, 1.5, 2
    b = metrics.barriers([0, 3, 2, 1, 2], A5)
    assert b["mid"] == pytest.approx(2 - 1)       # L(1/2) - mean of the endpoints
    assert b["max_mean"] == pytest.approx(3 - 1)  # max L - mean of the endpoints
    assert b["max_chord"] == pytest.approx(3 - 0.5)  # largest gap to the chord, at alpha = 1/4


def test_a_line_has_no_barrier_and_a_bump_has_its_height():
    assert metrics.barriers([0, 0.5, 1], [0, 0.5, 1]) == pytest.approx({"mid": 0, "max_mean": 0.5, "max_chord": 0})
    assert metrics.barriers([1, 3, 1], [0, 0.5, 1]) == pytest.approx({"mid": 2, "max_mean": 2, "max_chord": 2})


def test_midpoint_is_interpolated_on_an_even_grid():
    assert metrics.barriers([0, 3, 3, 0], np.linspace(0, 1, 4))["mid"] == pytest.approx(3)


def test_mli_statistics_of_a_decreasing_curve():
    s = metrics.mli_stats([1, 0.9, 0.2, 0.1, 0], A5)
    assert s["delta"] == pytest.approx(-0.1)  # largest single-step change: still a decrease
    assert s["monotonic"] is True
    # second differences: -0.6, 0.6, 0.0 -> two of three are >= 0; the minimum / h^2
    assert s["local_convexity"] == pytest.approx(2 / 3)
    assert s["min_second_diff"] == pytest.approx(-0.6 / 0.25 ** 2)
    # the chord 1, .75, .5, .25, 0: 0.9 lies above it, 0.2 and 0.1 below
    assert s["global_convexity"] == pytest.approx(2 / 3)


def test_upstream_compat_draws_the_line_through_the_first_two_points():
    # upstream: L0 + (L[1] - L0) * alpha = 1 - 0.1 alpha: every point of a decreasing curve is below it
    s = metrics.mli_stats([1, 0.9, 0.2, 0.1, 0], A5, upstream_compat=True)
    assert s["global_convexity"] == 1.0
    assert metrics.mli_stats([1, 0.9, 0.2, 0.1, 0], A5)["global_convexity"] < 1.0


def test_delta_is_one_step_and_monotonic_uses_the_tolerance():
    s = metrics.mli_stats([1, 0.5, 0.7, 0.2, 0], A5)
    assert s["delta"] == pytest.approx(0.2)
    assert s["monotonic"] is False
    assert metrics.mli_stats([1, 0.5, 0.7, 0.2, 0], A5, tol=0.25)["monotonic"] is True
    # a rise spread over two steps scores its largest step, not its height
    assert metrics.mli_stats([1, 0.5, 0.6, 0.7, 0], A5)["delta"] == pytest.approx(0.1)


def test_bad_grids_are_refused():
    with pytest.raises(ValueError):
        metrics.barriers([0, 1], [0, 1])
    with pytest.raises(ValueError):
        metrics.barriers([0, 1, 2], [0, 0.7, 0.5])
    with pytest.raises(ValueError):
        metrics.mli_stats([0, 1, 2, 3], [0, 0.1, 0.5, 1])


def test_summaries_and_paired_differences():
    s = metrics.summarize([1.0, 2.0, 3.0])
    assert (s["n"], s["mean"], s["std"]) == (3, 2.0, 1.0)
    assert 1.0 <= s["ci_low"] <= 2.0 <= s["ci_high"] <= 3.0
    one = metrics.summarize([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    d = metrics.paired_diff({0: 1.0, 1: 2.0, 2: 3.0, 9: 100.0}, {0: 0.5, 1: 1.5, 2: 2.5})
    assert d["matched"] == 3 and d["mean"] == pytest.approx(-0.5)
    assert d["ci_low"] == pytest.approx(-0.5) and d["ci_high"] == pytest.approx(-0.5)
    u = metrics.unpaired_diff([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    assert u["mean"] == 1.0 and u["ci_low"] == 1.0
