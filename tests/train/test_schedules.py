import math

import pytest

from raytower.train.schedules import logq_weight, temperature


def test_temperature_decays_geometrically_to_its_floor():
    taus = [temperature(e, 1.0, 0.5, 0.1) for e in range(6)]
    assert taus[:4] == [1.0, 0.5, 0.25, 0.125]
    assert taus[4:] == [0.1, 0.1]  # floor reached: max(temp_min, ...)


def test_anneal_rate_one_keeps_temperature_fixed():
    assert {temperature(e, 0.07, 1.0, 0.01) for e in range(10)} == {0.07}


def test_logq_ramp_waits_then_rises_linearly():
    lam = [logq_weight(e, warmup_epochs=2, logq_max=0.05, ramp_epochs=5) for e in range(9)]
    assert lam[:2] == [0.0, 0.0]
    assert lam[2:7] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])
    assert lam[7:] == [0.05, 0.05]
    assert all(b >= a for a, b in zip(lam, lam[1:]))


def test_logq_without_ramp_jumps_to_max_after_warmup():
    assert logq_weight(0, 1, 0.1, 0) == 0.0
    assert math.isclose(logq_weight(1, 1, 0.1, 0), 0.1)
