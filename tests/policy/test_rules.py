"""The rules are one implementation for two number types: exact Decimals and float64 arrays."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jevons.policy import rules as R

money = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)
frac = st.decimals(min_value=0, max_value=D("0.95"), places=3)


def test_floor_multiplier_rounds_up_so_the_floor_is_never_undershot() -> None:
    m = R.floor_multiplier(D("0.3"))
    assert m * D("0.7") >= 1
    assert R.floor_multiplier(D("0.2")) == D("1.25")
    with pytest.raises(ValueError):
        R.floor_multiplier(D(1))


def test_each_rule_by_hand() -> None:
    with R.rating_context():
        assert R.token_list_charge({"input": 500_000, "output": 250_000},
                                   {"input": D(2), "output": D(8)}) == D(3)
        assert R.price_list_charge(D(2), D("1.5")) == D(3)
        f = R.apply_floor(D(3), D(2), D(2))
        assert (f.charge, f.floor, f.uplift) == (D(4), D(4), D(1))
        a = R.allowance_split(D(4), D(4), D(1))
        assert (a.used, a.included, a.overage) == (D(1), D(1), D(3))
        d = R.discount(D(10), D(9), D("0.2"), D(5))
        assert (d.net, d.percent_off, d.fixed_off) == (D(9), D(1), D(0))
        d = R.discount(D(10), D(2), D("0.1"), D(5))
        assert (d.net, d.percent_off, d.fixed_off) == (D(4), D(1), D(5))
        c = R.apply_cap(D(5), D(3))
        assert (c.billed, c.absorbed) == (D(3), D(2))
        assert R.apply_cap(D(5), R.INF).billed == D(5)
        assert R.prorate(D(31), D(10), D(31)) == D(10)
        assert R.commitment_true_up(D(50), D(60)) == 0
        assert R.period_floor_true_up(D(12), D(10), D(2)) == D(8)
        assert R.credit_draw(D(3), D(5)) == D(3)
        assert R.credit_draw(D(-1), D(5)) == 0


@settings(max_examples=60, deadline=None)
@given(cost=money, markup=st.decimals(min_value=D("0.1"), max_value=5, places=2), floor=frac,
       allowance=money, percent=frac, fixed=money, headroom=money)
def test_rate_unit_gives_the_same_answer_on_decimals_and_arrays(
    cost: D, markup: D, floor: D, allowance: D, percent: D, fixed: D, headroom: D
) -> None:
    mult = R.floor_multiplier(floor)
    with R.rating_context():
        exact = R.rate_unit(list_charge=R.price_list_charge(cost, markup), cost=cost, floor_multiplier=mult,
                            allowance_unit="usd_charge", tokens=None, percent=percent,
                            state=R.UnitState.start(allowance, fixed, headroom))
    arr = np.array([float(cost), float(cost)])
    P = lambda d: R.param(d, like=arr)  # noqa: E731
    approx = R.rate_unit(list_charge=R.price_list_charge(arr, P(markup)), cost=arr,
                         floor_multiplier=P(mult), allowance_unit="usd_charge", tokens=None,
                         percent=P(percent), state=R.UnitState.start(P(allowance), P(fixed), P(headroom)))
    for name in ("charge", "included", "overage", "net", "billed", "absorbed", "absorbed_cost"):
        want = float(getattr(exact, name))
        got = getattr(approx, name)
        assert np.allclose(got, want, rtol=1e-9, atol=1e-9), name
    assert exact.billed >= 0 and exact.billed <= headroom
    with R.rating_context():  # the charge is never below the floor
        assert exact.charge >= cost * mult
        assert exact.charge * (1 - floor) >= cost


def test_close_period_on_arrays_and_decimals() -> None:
    with R.rating_context():
        p = R.close_period(fees=D(10), usage_billed=D(15), commitment=D(50), period_cost=D(40),
                           absorbed_cost=D(0), period_floor_multiplier=D(2))
    assert (p.commitment_true_up, p.floor_true_up, p.revenue) == (D(25), D(30), D(80))
    arr = np.array([10.0])
    q = R.close_period(fees=arr, usage_billed=np.array([15.0]), commitment=np.array([50.0]),
                       period_cost=np.array([40.0]), absorbed_cost=np.array([0.0]),
                       period_floor_multiplier=R.param(D(2), like=arr))
    assert q.revenue.tolist() == [80.0]


def test_share_is_exact_for_all_or_nothing_and_safe_on_zero() -> None:
    assert R.share(D("1.7"), D(3), D(3)) == D("1.7")
    assert R.share(D("1.7"), D(0), D(3)) == 0
    assert R.share(D("1.7"), D(0), D(0)) == D("1.7")  # part == whole
    out = R.share(np.array([1.0, 2.0]), np.array([0.0, 1.0]), np.array([0.0, 4.0]))
    assert out.tolist() == [1.0, 0.5]


def test_param_refuses_floats_in_exact_mode() -> None:
    with pytest.raises(TypeError):
        R.param(0.1, like=D(1))


def test_a_meter_and_its_policy_engine_do_not_import_numpy(tmp_path: Path) -> None:
    """numpy is the simulator's and the batch rater's: a process that only meters calls (every
    ``Meter`` loads the policy engine, which rates with these rules in Decimal) must not pay
    its import time nor start OpenBLAS's threads. A fresh interpreter, since this one has it."""
    code = ("import sys, jevons\n"
            "m = jevons.Meter(ledger='memory')\n"
            "m.record(model='gpt-4o-mini', provider='openai', customer='acme',\n"
            "         usage=jevons.Usage(input_tokens=10, output_tokens=5))\n"
            "m.close()\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'numpy'))\n")
    env = {**os.environ, "JEVONS_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_array_branches_still_work_once_numpy_is_loaded() -> None:
    assert not R.is_array(D(1)) and R.is_array(np.float64(1.0)) and R.is_array(np.zeros(2))
    assert R.maximum(np.asarray([1.0, 5.0]), R.param(D(3), like=np.zeros(2))).tolist() == [3.0, 5.0]
    assert R.zero(np.ones(3)).tolist() == [0.0, 0.0, 0.0]
    assert R.share(np.asarray([10.0]), np.asarray([1.0]), np.asarray([4.0])).tolist() == [2.5]
