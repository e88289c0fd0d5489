"""The command line's input pipeline alone (augmented images per second), per loader; the report
sets it against the images per second of the search step it feeds."""
import pytest
from cases import measure
from pipeline_cases import PIPELINE_IMAGES, PIPELINE_LOADERS, input_pipeline


@pytest.mark.parametrize("impl", list(PIPELINE_LOADERS))
def test_input_pipeline(benchmark, device, impl):
    benchmark.group = f"input pipeline {PIPELINE_IMAGES} images {device.type}"
    count = measure(benchmark, input_pipeline(impl, device), rounds=3)
    assert count == PIPELINE_IMAGES
