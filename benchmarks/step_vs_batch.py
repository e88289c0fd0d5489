"""The second-order step against batch size: the plot of its time and peak memory, and the
largest batch that fits a memory budget.
"""
import numpy as np
from measure import run_child


def plot(device, batches, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    results = {}
    for impl in ("reference", "fused_unfolded", "fused", "fused_recompute"):
        rows = [run_child({"impl": impl, "device": device.type, "unrolled": True, "batch": b})
                for b in batches]
        results[impl] = rows
        ax_t.plot(batches, [r["seconds"] for r in rows], marker="o", label=impl)
        ax_m.plot(batches, [r["peak_mb"] for r in rows], marker="o", label=impl)
    ax_t.set_ylabel("second-order search step (s)")
    ax_m.set_ylabel("peak memory above the model (MB)")
    for ax in (ax_t, ax_m):
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"search step vs batch size ({device.type})")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return results


def budget_table(device, batches, curve, budget_mb):
    """The largest batch whose second-order step fits ``budget_mb``, per implementation: the
    line through the measured peaks predicts it, and a step at that batch, run in a fresh
    process, checks it."""
    enforced = ", the budget set as the allocator limit" if device.type == "cuda" else ""
    lines = [f"Largest second-order batch within a {budget_mb:.0f} MB budget (a line fitted "
             f"through the peaks above predicts it; one step at that batch, in a fresh process, "
             f"checks it{enforced}):\n", "| implementation | MB per image | predicted batch | "
             "measured peak at it | fits |", "|---|---|---|---|---|"]
    records = []
    for impl, rows in curve.items():
        slope, intercept = np.polyfit(batches, [r["peak_mb"] for r in rows], 1)
        batch = max(1, int((budget_mb - intercept) // slope))
        result = run_child({"impl": impl, "device": device.type, "unrolled": True,
                            "batch": batch, "repeats": 1, "budget_mb": budget_mb})
        peak = result.get("peak_mb")
        # On CUDA the allocator enforced the budget (model included): no error, it fit.
        fits = peak is not None and (device.type == "cuda" or peak <= budget_mb)
        lines.append(f"| {impl} | {slope:.1f} | {batch} | "
                     f"{'out of memory' if peak is None else f'{peak:.0f} MB'} | "
                     f"{'yes' if fits else 'no'} |")
        records.append({"impl": impl, "mb_per_image": slope, "batch": batch, "peak_mb": peak})
    return "\n".join(lines) + "\n", records
