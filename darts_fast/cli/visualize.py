"""Pictures of a run as PNG bytes (the run folder writes them): cell diagrams, alpha heatmaps,
learning curves. Cell diagrams use graphviz's ``dot`` when it is installed, matplotlib
otherwise."""
import io
import shutil
import subprocess

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..genotypes import PRIMITIVES  # noqa: E402


def _png(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
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


def _cell_matplotlib(edges, concat, title):
    steps, names, outputs = _states(edges, concat)
    pos = {names[0]: (0.0, 0.75), names[1]: (0.0, 0.25), "c_{k}": (steps + 1.0, 0.5)}
    for i in range(steps):
        pos[names[2 + i]] = (i + 1.0, 0.15 + 0.7 * ((i % 2) * 0.8 + 0.1))
    fig, ax = plt.subplots(figsize=(2.4 * (steps + 2), 4))
    colours = {op: plt.cm.tab10(k % 10) for k, op in enumerate(PRIMITIVES)}
    for e, (op, j) in enumerate(edges):
        a, b = pos[names[j]], pos[names[2 + e // 2]]
        rad = 0.25 if e % 2 else -0.25
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
        ax.text(x, y, f"${n}$" if n.startswith("c_") else n, ha="center", va="center",
                fontsize=11, bbox=dict(boxstyle="round,pad=0.5", facecolor=fill))
    ax.set_xlim(-0.5, steps + 1.5)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.set_title(title)
    return _png(fig)


def alphas_png(normal, reduce, title):
    """Heatmaps of the softmaxed alphas (edges x operations) of both cell types."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    for ax, weights, name in zip(axes, (normal, reduce), ("normal", "reduction")):
        # The colour scale spans this matrix's own range: early in a search every weight is near
        # 1/8 and a fixed 0..1 scale would show nothing.
        image = ax.imshow(weights, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(weights)), _edge_labels(len(weights)), fontsize=8)
        ax.set_ylabel("edge (input -> node)")
        ax.set_title(f"{name} cell")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title)
    return _png(fig)


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
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for split in ("train", "valid"):
        ax_loss.plot(epochs, [float(r[f"{split}_loss"]) for r in rows], marker="o", label=split)
        ax_acc.plot(epochs, [float(r[f"{split}_acc"]) for r in rows], marker="o", label=split)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)
