"""benchmarks/one_shot.py: every case builds and runs (on small shapes), the formulations of a
case compute the same numbers from the same weights (float64), and its tables hold the ratios
of the results they are given."""
import one_shot
import pytest
import torch
from helpers import TOLERANCE, rel_err

pytestmark = pytest.mark.slow  # CI's second pass: see pytest.ini

CPU = torch.device("cpu")
TINY = dict(C=4, layers=3, batch=2, image=8, dtype="float64",
            evolution=dict(C=4, layers=3, batch=2, image=8, dtype="float64", recalibration=2,
                           validation=2, population=4))


def first_results(case):
    """{impl: what the first call returns}, after checking that a second call runs too."""
    results = {}
    for impl in one_shot.impls(case, "cpu"):  # torch.compile is CUDA's alone
        run = one_shot.BUILD[case](impl, CPU, TINY)
        results[impl] = run().clone()
        assert torch.isfinite(results[impl]).all() and torch.isfinite(run()).all()
    return results


def test_the_single_path_formulations_compute_the_same_step():
    """The same path from the same weights: one loss, to float64 rounding."""
    results = first_results("single_path_step")
    assert set(results) == {"masked_all", "stacked", "fused"}
    for impl, loss in results.items():
        assert rel_err(loss, results["masked_all"]) < TOLERANCE[torch.float64], impl


def test_the_proxyless_step_moves_the_alphas_as_the_authors():
    """The same draws from the same seed, then the same alphas after the step (gate gradients,
    the pair's alpha gradient, Adam, the rescale)."""
    results = first_results("proxyless_step")
    assert rel_err(results["fused"], results["reference"]) < TOLERANCE[torch.float64]


def test_the_evolution_generation_runs_on_both_networks():
    results = first_results("evolution_generation")
    assert set(results) == {"masked", "fused"}
    assert all(0 <= float(score) <= 1 for score in results.values())


def test_the_masks_weigh_the_path_alone():
    from one_shot_cases import one_hot
    mask = one_hot(((0, 3), (1, 5), (2, 1), (2, 1), (0, 7), (3, 2), (4, 6), (1, 1)), 4,
                   torch.zeros((), dtype=torch.float64))
    assert mask.shape == (14, 8) and mask.sum() == 8
    # Node 3's pair (2, 1), taken twice: edge (2, 3), row 4, weight 2; node 2's edge (1, 2).
    assert mask[4, 1] == 2 and mask[1, 5] == 1 and mask[13, 6] == 1


def test_tables_hold_the_ratios():
    def runs(*seconds, peak=100.0):
        return [{"seconds": s, "peak_mb": peak} for s in seconds]

    results = {
        "single_path_step": {"masked_all": runs(3.0, 4.0, 6.0, peak=200.0),
                             "stacked": runs(3.0, 4.0, 6.0, peak=300.0),
                             "fused": runs(1.0, 1.0, 2.0, peak=50.0)},
        "evolution_generation": {"masked": runs(10.0), "fused": runs(2.5, peak=25.0)},
    }
    table, targets = one_shot.tables(results)
    assert "| fused | 1.000 [1.000-2.000] | 1.0 [0.5-1.0] steps/s | 3.00x [3.00x-4.00x] over " \
           "masked_all | 50 [50-50] | 0.25 [0.25-0.25] |" in table
    assert "| stacked | 4.000 [3.000-6.000] |" in table and "| 1.50 [1.50-1.50] |" in table
    assert "single-path step: fused >= 3x masked_all | 3.00x [3.00x-4.00x] | yes |" in targets
    assert "| fused | 2.500 [2.500-2.500] | 20.0 [20.0-20.0] candidates/s | 4.00x " \
           "[4.00x-4.00x] over masked |" in table
    assert "evolution" not in targets
    results["single_path_step"]["fused"] = runs(2.0, 2.0, 2.0)
    _, targets = one_shot.tables(results)
    assert "| 2.00x [1.50x-3.00x] | NOT met |" in targets


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_compile_is_skipped_on_the_cpu_alone(device_type):
    assert ("compiled_masked_all" in one_shot.impls("single_path_step", device_type)) == \
        (device_type == "cuda")
