"""The run pictures: PNGs that decode to drawings, the same whatever was drawn before them."""
import io

import matplotlib.image
import numpy as np
import pytest
import torch

from darts_fast.cli import visualize
from darts_fast.spaces.cnn.architecture import ArchitectureTable, cell_edges
from darts_fast.spaces.cnn.genotypes import DARTS_V2, PRIMITIVES

ROWS = [{"epoch": str(e), "train_loss": f"{2.3 - 0.1 * e}", "train_acc": f"{10 + 5 * e}",
         "valid_loss": f"{2.4 - 0.1 * e}", "valid_acc": f"{9 + 5 * e}"} for e in range(1, 4)]


def alphas(seed):
    """Tables of softmaxed alphas of both cells of a 4-step search: 14 edges x 8 operations."""
    rng = np.random.default_rng(seed)
    return [ArchitectureTable(name, torch.from_numpy(rng.dirichlet(np.ones(8), 14)), None,
                              cell_edges(4), tuple(PRIMITIVES)) for name in ("normal", "reduce")]


PICTURES = {
    "cell": lambda: visualize.cell_png(DARTS_V2.normal, DARTS_V2.normal_concat, "normal cell"),
    "alphas": lambda: visualize.alphas_png(alphas(0), "softmax(alpha), epoch 3"),
    "curves": lambda: visualize.curves_png(ROWS),
}


@pytest.mark.parametrize("kind", PICTURES)
def test_pictures_decode_to_drawings(kind):
    png = PICTURES[kind]()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(io.BytesIO(png))
    assert image.shape[0] > 100 and image.shape[1] > 2 * image.shape[0]
    assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 10  # not a blank page


def test_pictures_show_their_data_whatever_was_drawn_before():
    # alphas_png and curves_png keep their figures from call to call.
    first = [visualize.alphas_png(alphas(1), "t"), visualize.curves_png(ROWS)]
    other = [visualize.alphas_png(alphas(2), "t"), visualize.curves_png(ROWS[:2])]
    assert first[0] != other[0] and first[1] != other[1]
    assert [visualize.alphas_png(alphas(1), "t"), visualize.curves_png(ROWS)] == first
