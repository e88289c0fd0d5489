"""Where the pictures put what they show: the matplotlib cell diagram's operation labels on
their own edges, clear of one another and of the states, and PC-DARTS' edge weights (the
softmax of its betas) beside the alphas that they weigh."""
import itertools
import json

import pytest

from darts_fast.cli import main, visualize
from darts_fast.spaces.cnn.genotypes import DARTS_V2, PRIMITIVES, Genotype

# PC-DARTS' published CIFAR-10 cell, but node 0 of the normal cell takes both inputs from
# c_{k-1}: two edges between the same two states.
PC_DARTS = Genotype(
    normal=[("sep_conv_3x3", 1), ("skip_connect", 1), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    reduce_concat=[2, 3, 4, 5])
CELLS = {f"{name} {kind}": (getattr(g, kind), getattr(g, f"{kind}_concat"))
         for name, g in (("DARTS_V2", DARTS_V2), ("PC-DARTS", PC_DARTS))
         for kind in ("normal", "reduce")}


def drawn(monkeypatch, make_png):
    """The figures that ``make_png`` draws (and turns into PNG bytes)."""
    figures, png = [], visualize._png
    monkeypatch.setattr(visualize, "_png", lambda fig: figures.append(fig) or png(fig))
    make_png()
    return figures


@pytest.mark.parametrize("cell", CELLS)
def test_each_operation_label_sits_on_its_own_edge_clear_of_the_others(cell, monkeypatch):
    edges, concat = CELLS[cell]
    monkeypatch.setattr(visualize.shutil, "which", lambda name: None)  # no graphviz
    [fig] = drawn(monkeypatch, lambda: visualize.cell_png(edges, concat, cell))
    [ax] = fig.axes
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text() in PRIMITIVES]
    # The edges' arrows come in the genotype's order, before those to the output.
    arrows = [t.arrow_patch for t in ax.texts if getattr(t, "arrow_patch", None)][:len(edges)]
    assert [t.get_text() for t in labels] == [op for op, _ in edges]
    for e, (label, arrow) in enumerate(zip(labels, arrows)):
        path = arrow.get_transform().transform_path(arrow.get_path())  # in pixels
        assert path.intersects_bbox(label.get_window_extent(renderer), filled=False), \
            f"edge {e} ({label.get_text()}): its label is off its line"
    # The labels' white boxes and the states' boxes
    boxes = {f"{t.get_text()} at {t.get_position()}": t.get_bbox_patch().get_window_extent(
        renderer) for t in ax.texts if t.get_text()}
    overlapping = [(a, b) for a, b in itertools.combinations(boxes, 2)
                   if boxes[a].overlaps(boxes[b])]
    assert not overlapping


SEARCH = ["search", "--layers", "3", "--init_channels", "8", "--batch_size", "4",
          "--synthetic_size", "16", "--epochs", "1", "--arch_start_epoch", "0", "--device", "cpu"]


@pytest.mark.parametrize("method", ["darts", "pc-darts"])
def test_the_alphas_picture_shows_pc_darts_edge_weights(method, monkeypatch, tmp_path, capsys):
    run = tmp_path / "run"
    figures = drawn(monkeypatch, lambda: main.main([*SEARCH, "--method", method,
                                                    "--run_dir", str(run)]))
    assert "search finished" in capsys.readouterr().out
    [fig] = [f for f in figures if f.get_suptitle().startswith("softmax(alpha)")]
    panels = [a for ax in fig.axes for a in (ax, *ax.child_axes)]
    beta_panels = [a for a in panels if "beta" in a.get_title()]
    if method == "darts":
        assert not beta_panels and not any(a.patches for a in panels)
        return
    saved = json.loads((run / "alphas_epoch_001.json").read_text())
    assert len(beta_panels) == 2  # normal, reduction
    assert [bar.get_width() for a in beta_panels for bar in a.patches] == \
        pytest.approx(saved["normal_edges"] + saved["reduce_edges"])
