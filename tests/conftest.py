"""The longest parametrised cases, which a decorator cannot single out, are marked slow: the
README's test command leaves them out and CI's second pass runs them (see pytest.ini). The same
checks stay in the README's command on float32 and on the smaller float64 shapes."""
import pytest

SLOW_CASES = (
    "test_mixed_op.py::test_matches_reference[cpu-16-32-1-4-dtype1-",
    "test_mixed_op.py::test_matches_reference[cpu-16-32-2-4-dtype1-",
    "test_mixed_op.py::test_matches_reference[cpu-32-16-2-4-dtype1-",
    "test_mixed_op.py::test_matches_reference[cpu-64-8-2-8-dtype1-",
    "test_method_registry.py::test_the_method_computes_with_its_own_weights",
    "test_precision.py::test_float32_equals_float64_given_the_same_decisions[darts-nchw-2]",
)


def pytest_collection_modifyitems(items):
    for item in items:
        if any(case in item.nodeid for case in SLOW_CASES):
            item.add_marker(pytest.mark.slow)
