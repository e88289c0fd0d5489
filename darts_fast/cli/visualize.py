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

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ..genotypes import PRIMITIVES

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
# Inches per data unit of the cell diagram, across and up: the scale it had inside pyplot's
# default margins.
_CELL_X, _CELL_Y = 1.86, 3.08


def _cell_matplotlib(edges, concat, title):
    steps, names, outputs = _states(edges, concat)
    pos = {names[0]: (0.0, 0.75), names[1]: (0.0, 0.25), "c_{k}": (steps + 1.0, 0.5)}
    for i in range(steps):
        pos[names[2 + i]] = (i + 1.0, 0.15 + 0.7 * ((i % 2) * 0.8 + 0.1))
    arcs = [(op, pos[names[j]], pos[names[2 + e // 2]], 0.25 if e % 2 else -0.25)
            for e, (op, j) in enumerate(edges)]
    # The figure holds the nodes and how far the arcs bulge past them: arc3's control point is
    # rad times the distance in inches off the middle, and the curve gets halfway there.
    ys = [y for _, y in pos.values()] + [
        (a[1] + b[1]) / 2 - rad * (b[0] - a[0]) * _CELL_X / _CELL_Y / 2 for _, a, b, rad in arcs]
    low, high = min(ys) - 0.1, max(ys) + 0.1
    height, title_room = (high - low) * _CELL_Y, 0.4
    fig = _figure(((steps + 1.6) * _CELL_X, height + title_room))
    ax = fig.add_axes((0, 0, 1, height / (height + title_room)))
    colours = {op: matplotlib.colormaps["tab10"](k % 10) for k, op in enumerate(PRIMITIVES)}
    for e, (op, a, b, rad) in enumerate(arcs):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(
            arrowstyle="-|>", color=colours.get(op, "gray"), lw=1.8, shrinkA=18, shrinkB=18,
            connectionstyle=f"arc3,rad={rad}"))
        mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + (0.06 if e % 2 else -0.06))
        ax.text(*mid, op, fontsize=8, ha="center", color=colours.get(op, "gray"),
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5))
    for n in outputs:
        ax.annotate("", xy=pos["c_{k}"], xytext=pos[n], arrowprops=dict(
            arrowstyle="-|>", color="lightgray", lw=1, shrinkA=18, shrinkB=18))
    for n, (x, y) in pos.items():
        fill = "darkseagreen" if n.startswith("c_{k-") else (
            "palegoldenrod" if n == "c_{k}" else "lightblue")
        ax.text(x, y, _SUBSCRIPTS.get(n, n), ha="center", va="center", fontsize=11,
                bbox=dict(boxstyle="round,pad=0.5", facecolor=fill))
    ax.set_xlim(-0.3, steps + 1.3)
    ax.set_ylim(low, high)
    ax.axis("off")
    fig.suptitle(title)
    return _png(fig)


def alphas_png(normal, reduce, title):
    """Heatmaps of the softmaxed alphas (edges x operations) of both cell types."""
    fig, images = _alphas_figure(len(normal))
    for image, weights in zip(images, (normal, reduce)):
        image.set_data(weights)
        # The colour scale spans this matrix's own range: early in a search every weight is near
        # 1/8 and a fixed 0..1 scale would show nothing.
        image.autoscale()
    fig.suptitle(title)
    return _png(fig)


@functools.lru_cache(maxsize=2)
def _alphas_figure(edges):
    fig = _figure((13, 5.5))
    # Margins fit the longest labels: 'c_{k-2} -> 0' and the ylabel on the left, the slanted
    # operation names below, the colour bar's ticks on the right, both titles on top.
    fig.subplots_adjust(left=0.085, right=0.955, bottom=0.17, top=0.89, wspace=0.4)
    images = []
    for ax, name in zip(fig.subplots(1, 2), ("normal", "reduction")):
        images.append(ax.imshow(np.zeros((edges, len(PRIMITIVES))), cmap="viridis", aspect="auto"))
        ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(edges), _edge_labels(edges), fontsize=8)
        ax.set_ylabel("edge (input -> node)")
        ax.set_title(f"{name} cell")
        fig.colorbar(images[-1], ax=ax, fraction=0.046)
    return fig, images


def _edge_labels(count):
    """'c_{k-2} -> 0', 'c_{k-1} -> 0', 'c_{k-2} -> 1', ..., '0 -> 1', ... in alpha row order."""
    labels, node = [], 0
    while len(labels) < count:
        names = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(node)]
        labels += [f"{n} -> {node}" for n in names]
        node += 1
    return labels[:count]


def curves_png(rows):
    """Loss and accuracy per epoch from metrics rows (dicts with epoch and train/valid values)."""
    fig, lines = _curves_figure()
    epochs = [int(r["epoch"]) for r in rows]
    for column, line in lines.items():
        line.set_data(epochs, [float(r[column]) for r in rows])
    for ax in fig.axes:
        ax.relim()
        ax.autoscale_view()
    return _png(fig)


@functools.lru_cache(maxsize=1)
def _curves_figure():
    fig = _figure((11, 4))
    fig.subplots_adjust(left=0.065, right=0.99, bottom=0.13, top=0.97, wspace=0.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    lines = {}
    for split in ("train", "valid"):
        lines[f"{split}_loss"], = ax_loss.plot([], [], marker="o", label=split)
        lines[f"{split}_acc"], = ax_acc.plot([], [], marker="o", label=split)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return fig, lines
