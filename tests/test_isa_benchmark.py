"""benchmarks/isa.py: its table holds the ratios of the results it is given, and the profile
child reports each operator's own time."""
import json

import isa
import pytest

pytestmark = pytest.mark.slow  # CI's second pass: see pytest.ini


def test_table_holds_the_ratios():
    results = {("second", "native"): {"reference": [6.0, 4.0, 9.0], "fused": [3.0, 4.0, 3.0]},
               ("second", "AVX2"): {"reference": [2.0], "fused": [4.0]}}
    table = isa.table(results)
    assert "| second order | native | 6.000 [4.000-9.000] | 3.000 [3.000-4.000] | " \
           "2.00x [1.00x-3.00x] |" in table
    assert "| second order | AVX2 | 2.000 [2.000-2.000] | 4.000 [4.000-4.000] | " \
           "0.50x [0.50x-0.50x] |" in table


def test_profile_child_reports_the_operators(capsys, monkeypatch):
    monkeypatch.setitem(isa.STEP_CONFIG, "cpu", dict(C=4, layers=3, batch=2, image=8))
    isa.profile_child({"impl": "fused", "unrolled": True})
    ops = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ops["aten::convolution_backward"][1] > 0 and ops["aten::convolution_backward"][0] > 0
