"""Pictures of a run as PNG bytes (the run folder writes them): cell diagrams, alpha heatmaps,
learning curves. Cell diagrams use graphviz's ``dot`` when it is installed, matplotlib
otherwise.

They are redrawn every epoch, so each figure is laid out from its content up front and drawn
once (``bbox_inches="tight"`` and constrained layout draw it two or three times), and the heatmap
and curve figures are built once and given new data after that: making their axes and ticks takes
as long as drawing them. Plain ``Figure`` objects keep pyplot's global figure list out of it; the
kept figures make these functions unsafe to call from several threads at once."""
import functools
import io
import shutil
import subprocess
import zlib

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ..spaces.cnn.genotypes import PRIMITIVES

DPI = 110


def _figure(size):
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)  # sets fig.canvas
    return fig


def _png(fig):
    fig.canvas.draw()
    buffer = io.BytesIO()
    # The figures are opaque: RGB is a quarter less to filter and compress than the RGBA savefig
    # writes, and zlib's fastest level takes half the time of the default for ~10% more bytes.
    Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]).save(
        buffer, format="png", compress_level=1)
    return buffer.getvalue()


def _states(edges, concat):
    steps = len(edges) // 2
    names = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(steps)]
    return steps, names, [names[i] for i in concat]


def cell_png(edges, concat, title):
    """The cell as a graph: inputs c_{k-2}, c_{k-1}, intermediate nodes, output c_{k}."""
    if shutil.which("dot"):
        return _cell_graphviz(edges, concat)
    return _cell_matplotlib(edges, concat, title)


def _cell_graphviz(edges, concat):
    steps, names, outputs = _states(edges, concat)
    lines = ["digraph cell {", "rankdir=LR;", 'node [style=filled, fontname="helvetica"];']
    for n in names[:2]:
        lines.append(f'"{n}" [fillcolor=darkseagreen2];')
    for n in names[2:]:
        lines.append(f'"{n}" [fillcolor=lightblue, shape=box];')
    lines.append('"c_{k}" [fillcolor=palegoldenrod];')
    for e, (op, j) in enumerate(edges):
        lines.append(f'"{names[j]}" -> "{names[2 + e // 2]}" [label="{op}"];')
    for n in outputs:
        lines.append(f'"{n}" -> "c_{{k}}";')
    lines.append("}")
    return subprocess.run(["dot", "-Tpng"], input="\n".join(lines).encode(), check=True,
                          capture_output=True).stdout


# Unicode subscripts rather than mathtext, whose parse is cached per renderer, so redone for every
# new figure.
_SUBSCRIPTS = {"c_{k-2}": "c\u2096\u208b\u2082", "c_{k-1}": "c\u2096\u208b\u2081",
               "c_{k}": "c\u2096"}
# The matplotlib cell diagram is an arc diagram, measured in inches: the states on a line, _STEP
# apart in the order they are computed, each edge an arc over the line (a node's first input)
# or under it (its second), its operation's label on the arc's top, where the arc runs level.
# An arc rises _RISE per state it spans, plus one _RISE: the labels of arcs of other spans lie
# at least _RISE apart in height, more than a label is tall; arcs of one span on one side start
# a whole _STEP apart, more than a label is wide; and a node's two edges from the same state
# take either side. So no label meets another, or a state.
_STEP, _RISE = 1.3, 0.25
# Room for half a label past the highest arc's top and half a state past the ends of the line.
_MARGIN, _TITLE = 0.2, 0.4


def _colour(op):
    """DARTS' candidates one colour each; any other candidate one of another palette, by name
    (the same in every picture)."""
    if op in PRIMITIVES:
        return matplotlib.colormaps["tab10"](PRIMITIVES.index(op) % 10)
    return matplotlib.colormaps["Dark2"](zlib.crc32(op.encode()) % 8)


def _cell_matplotlib(edges, concat, title):
    _, names, outputs = _states(edges, concat)
    order = names + ["c_{k}"]
    x = {n: i * _STEP for i, n in enumerate(order)}
    def arc(op, a, b, side, colour):  # side 1: over the line; -1: under it
        return op, x[a], x[b], side * _RISE * (1 + order.index(b) - order.index(a)), colour

    arcs = [arc(op, names[j], names[2 + e // 2], 1 - 2 * (e % 2), _colour(op))
            for e, (op, j) in enumerate(edges)]
    arcs += [arc("", n, "c_{k}", -1, "lightgray") for n in outputs]
    low = min(top for _, _, _, top, _ in arcs) - _MARGIN
    high = max(top for _, _, _, top, _ in arcs) + _MARGIN
    width = x["c_{k}"] + _STEP
    fig = _figure((width, high - low + _TITLE))
    # The axes span these limits over as many inches: arc3, which bends in display space, bends
    # the same in data units.
    ax = fig.add_axes((0, 0, 1, (high - low) / (high - low + _TITLE)))
    ax.set_xlim(-_STEP / 2, width - _STEP / 2)
    ax.set_ylim(low, high)
    for op, a, b, top, colour in arcs:
        # arc3's control point lies rad times the span off the middle of the line (above it for
        # a negative rad, the arc running to the right), and its curve goes halfway there.
        ax.annotate("", xy=(b, 0), xytext=(a, 0), arrowprops=dict(
            arrowstyle="-|>", color=colour, lw=1.8 if op else 1, shrinkA=16, shrinkB=16,
            connectionstyle=f"arc3,rad={-2 * top / (b - a)}"))
    for op, a, b, top, colour in arcs:
        if op:  # after every arc, so that no line crosses a label
            ax.text((a + b) / 2, top, op, fontsize=8, ha="center", va="center", color=colour,
                    bbox=dict(facecolor="white", edgecolor=colour, lw=0.6, pad=1.5))
    for n, at in x.items():
        fill = "darkseagreen" if n.startswith("c_{k-") else (
            "palegoldenrod" if n == "c_{k}" else "lightblue")
        ax.text(at, 0, _SUBSCRIPTS.get(n, n), ha="center", va="center", fontsize=11,
                bbox=dict(boxstyle="round,pad=0.5", facecolor=fill))
    ax.axis("off")
    fig.suptitle(title)
    return _png(fig)


def alphas_png(tables, title):
    """Heatmaps of the candidate weights (edges x candidates) of the normal and the reduction
    cell, from their ``ArchitectureTable``s; where a table has per-edge scales (PC-DARTS': per
    node, the softmax of the betas of its edges) a bar of each edge's scale beside its row, as the
    genotype weighs it."""
    scaled = tables[0].edge_scale is not None
    fig, images, bars = _alphas_figure(tables[0].edges, tables[0].candidates, scaled)
    for image, table in zip(images, tables):
        image.set_data(table.weights.numpy())
        # The colour scale spans this matrix's own range: early in a search every weight is near
        # 1/8 and a fixed 0..1 scale would show nothing.
        image.autoscale()
    for cell_bars, table in zip(bars, tables if scaled else ()):
        for bar, weight in zip(cell_bars, table.edge_scale.tolist()):
            bar.set_width(weight)
    fig.suptitle(title)
    return _png(fig)


@functools.lru_cache(maxsize=2)
def _alphas_figure(edges, candidates, edge_weights):
    fig = _figure((16 if edge_weights else 13, 5.5))
    # Margins fit the longest labels: 'c_{k-2} -> 0' and the ylabel on the left, the slanted
    # operation names below, the colour bar's ticks (past the edge weights) on the right, the
    # titles on top.
    if edge_weights:
        fig.subplots_adjust(left=0.07, right=0.83, bottom=0.17, top=0.86, wspace=0.75)
    else:
        fig.subplots_adjust(left=0.085, right=0.955, bottom=0.17, top=0.89, wspace=0.4)
    images, bars = [], []
    rows = len(edges)
    for ax, name in zip(fig.subplots(1, 2), ("normal", "reduction")):
        images.append(ax.imshow(np.zeros((rows, len(candidates))), cmap="viridis",
                                aspect="auto"))
        ax.set_xticks(range(len(candidates)), candidates, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(rows), [_edge_label(j, node) for j, node in edges], fontsize=8)
        ax.set_ylabel("edge (input -> node)")
        ax.set_title(f"{name} cell")
        if not edge_weights:
            fig.colorbar(images[-1], ax=ax, fraction=0.046)
            continue
        side = ax.inset_axes((1.04, 0, 0.24, 1), sharey=ax)
        bars.append(side.barh(range(rows), np.zeros(rows), height=0.7, color="darkorange"))
        for row in range(1, rows):  # each node's edges share one softmax
            if edges[row][1] != edges[row - 1][1]:
                side.axhline(row - 0.5, color="gray", lw=0.6)
        side.set_xlim(0, 1)
        side.set_xticks((0, 0.5, 1), ("0", "0.5", "1"), fontsize=8)
        side.tick_params(labelleft=False)
        side.set_title("edge weight:\nsoftmax(beta)\nper node", fontsize=8)
        fig.colorbar(images[-1], cax=ax.inset_axes((1.34, 0, 0.05, 1)))
    return fig, images, bars


def _edge_label(source, node):
    """'c_{k-2} -> 0' for the edge from state ``source`` to state ``node`` (the cell's inputs are
    states 0 and 1, its first node state 2, labelled 0)."""
    name = ("c_{k-2}", "c_{k-1}")[source] if source < 2 else str(source - 2)
    return f"{name} -> {node - 2}"


def curves_png(rows, metric="acc"):
    """Loss and ``metric`` per epoch from metrics rows (dicts with epoch and train/valid values;
    ``metric``: "acc", accuracy in %, or "ppl", perplexity, on a log scale)."""
    fig, lines = _curves_figure(metric)
    epochs = [int(r["epoch"]) for r in rows]
    for column, line in lines.items():
        line.set_data(epochs, [float(r[column]) for r in rows])
    for ax in fig.axes:
        ax.relim()
        ax.autoscale_view()
    return _png(fig)


_METRIC_AXES = {"acc": ("accuracy (%)", "linear"), "ppl": ("perplexity", "log")}


@functools.lru_cache(maxsize=2)
def _curves_figure(metric):
    fig = _figure((11, 4))
    fig.subplots_adjust(left=0.065, right=0.99, bottom=0.13, top=0.97, wspace=0.2)
    ax_loss, ax_metric = fig.subplots(1, 2)
    lines = {}
    for split in ("train", "valid"):
        lines[f"{split}_loss"], = ax_loss.plot([], [], marker="o", label=split)
        lines[f"{split}_{metric}"], = ax_metric.plot([], [], marker="o", label=split)
    label, scale = _METRIC_AXES[metric]
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(label)
    ax_metric.set_yscale(scale)
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return fig, lines


def recurrent_alphas_png(weights, candidates, edges, title):
    """A heatmap of the recurrent cell's candidate weights ``weights`` [edges, candidates] (the
    softmax of each row of the alphas), a row per edge ``(j, i)``: state j into node i."""
    fig, image = _recurrent_alphas_figure(tuple(map(tuple, edges)), tuple(candidates))
    image.set_data(np.asarray(weights))
    image.autoscale()  # early in a search every weight is near 1/5: this matrix's own range
    fig.suptitle(title)
    return _png(fig)


@functools.lru_cache(maxsize=1)
def _recurrent_alphas_figure(edges, candidates):
    fig = _figure((5.5, 9))
    fig.subplots_adjust(left=0.2, right=0.88, bottom=0.1, top=0.95)
    ax = fig.subplots()
    image = ax.imshow(np.zeros((len(edges), len(candidates))), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(candidates)), candidates, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(edges)), [f"s{j} -> s{i}" for j, i in edges], fontsize=7)
    ax.set_ylabel("edge (state -> node)")
    fig.colorbar(image, ax=ax, fraction=0.08)
    return fig, image


def collapse_png(history):
    """The skip-connections of each cell's genotype per epoch and, where it was computed, the
    dominant Hessian eigenvalue (``guards.Guards.history`` rows)."""
    fig, ax, twin, lines = _collapse_figure()
    epochs = [row["epoch"] for row in history]
    for cell in ("normal", "reduce"):
        lines[cell].set_data(epochs, [row[f"skips_{cell}"] for row in history])
    shown = [row for row in history if row.get("eigenvalue") is not None]
    lines["eigenvalue"].set_data([row["epoch"] for row in shown],
                                 [row["eigenvalue"] for row in shown])
    twin.set_visible(bool(shown))
    for axis in (ax, twin):
        axis.relim()
        axis.autoscale_view()
    legend = [lines["normal"], lines["reduce"], *([lines["eigenvalue"]] if shown else [])]
    ax.legend(legend, [line.get_label() for line in legend], loc="upper left")
    return _png(fig)


@functools.lru_cache(maxsize=1)
def _collapse_figure():
    fig = _figure((7, 3.5))
    fig.subplots_adjust(left=0.09, right=0.9, bottom=0.14, top=0.97)
    ax = fig.subplots()
    twin = ax.twinx()
    lines = {cell: ax.plot([], [], marker="o", label=f"skip-connections, {cell} cell")[0]
             for cell in ("normal", "reduce")}
    lines["eigenvalue"], = twin.plot([], [], color="tab:red", marker=".",
                                     label="dominant Hessian eigenvalue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("skip-connections in the genotype")
    twin.set_ylabel("eigenvalue")
    for axis in (ax.yaxis, ax.xaxis):
        axis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return fig, ax, twin, lines
