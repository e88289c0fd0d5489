"""benchmarks/family.py: every case builds and runs (on small shapes), and its tables hold the
ratios of the results they are given."""
import family
import pytest
import torch


@pytest.mark.parametrize("case", sorted(family.CASES))
def test_every_case_runs(case):
    config = dict(C=4, layers=3, batch=2, image=8, op_batch=2,
                  rnn=dict(ntoken=30, nhid=6, batch=3, bptt=4),
                  pdarts=dict(C=4, layers=3, batch=2, image=8))
    for impl in family.CASES[case][0]:
        if impl == "compiled_reference":  # compiling takes minutes on the CPU
            continue
        run = family.build(case, impl, torch.device("cpu"), config)
        for result in (run(), run()):
            assert all(torch.isfinite(t).all() for t in (result if isinstance(result, tuple)
                                                           else (result,)))


def test_tables_hold_the_ratios():
    def runs(*seconds, peak=100.0):
        return [{"seconds": s, "peak_mb": peak} for s in seconds]

    results = {
        "pc_step_first": {"reference": runs(3.0, 4.0, 6.0, peak=200.0),
                          "fused": runs(2.0, 2.0, 2.0, peak=150.0)},
        "pc_mixed_op_stride2": {"reference": runs(1.0),
                                "compiled_reference": [{"seconds": 0.5, "peak_mb": None}],
                                "fused": runs(1.0), "reference_channels_last": runs(2.0),
                                "fused_channels_last": runs(1.0)},
    }
    table, targets = family.tables(results)
    assert "| PC-DARTS search step, first order | fused | 2.000 [2.000-2.000] | 2.00x " \
           "[1.50x-3.00x] | 150 [150-150] | 0.75 [0.75-0.75] |" in table
    assert "first order: speed >= 1.3x | 2.00x [1.50x-3.00x] | yes |" in targets
    assert "first order: peak memory <= 0.8x | 0.75x [0.75x-0.75x] | yes |" in targets
    assert "stride 2: speed >= 1.5x | 1.00x [1.00x-1.00x] | NO |" in targets
    assert "| compiled_reference | 0.500 [0.500-0.500] | 2.00x [2.00x-2.00x] | n/a | n/a |" in table
    # channels_last against the authors' code on channels_last
    assert "stride 2, channels_last: speed >= 1.5x | 2.00x [2.00x-2.00x] | yes |" in targets


def test_targets_per_device():
    assert family.target("rnn_step_second", "cpu") == (1.3, 0.5)
    assert family.target("rnn_step_second", "cuda") == (4.0, None)
    results = {"rnn_step_second": {"reference": [{"seconds": 4.0, "peak_mb": 100.0}],
                                   "fused": [{"seconds": 1.0, "peak_mb": 60.0}]},
               "rnn_node": {"reference": [{"seconds": 1.0, "peak_mb": 10.0}],
                            "compiled_reference": [{"seconds": 1.0, "peak_mb": None}],
                            "fused": [{"seconds": 0.5, "peak_mb": 5.0}]}}
    table, targets = family.tables(results, "cuda")
    assert "second order, bptt 35, 300 units: speed >= 4.0x | 4.00x [4.00x-4.00x] | yes |" \
        in targets
    assert "peak memory" not in targets and "recurrent node" not in targets
    assert "| DARTS recurrent node fwd+bwd, 8 predecessors, 300 units | fused | 0.500 " \
           "[0.500-0.500] | 2.00x [2.00x-2.00x] | 5 [5-5] | 0.50 [0.50-0.50] |" in table
    _, targets = family.tables(results, "cpu")
    assert "300 units: peak memory <= 0.5x | 0.60x [0.60x-0.60x] | NO |" in targets
