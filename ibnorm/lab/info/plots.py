"""Information-plane and per-layer plots (PNG, matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path

from ..records import save_figure


def information_planes(runs: dict[str, list[dict]], path: Path) -> None:
    """One panel per run: I(X;T) vs I(T;Y), a trajectory per layer, points coloured by training step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    cols = min(2, len(names))
    rows_n = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.2 * rows_n), squeeze=False)
    steps_all = sorted({r["step"] for rows in runs.values() for r in rows})
    vmin, vmax = steps_all[0], max(steps_all[-1], steps_all[0] + 1)
    for ax, name in zip(axes.flat, names):
        by_layer: dict[str, list[dict]] = {}
        for r in runs[name]:
            by_layer.setdefault(r["layer"], []).append(r)
        for layer, rs in by_layer.items():
            rs.sort(key=lambda r: r["step"])
            xs, ys = [r["I_XT"] for r in rs], [r["I_TY"] for r in rs]
            ax.plot(xs, ys, color="0.75", lw=0.8, zorder=1)
            sc = ax.scatter(xs, ys, c=[r["step"] for r in rs], cmap="viridis", vmin=vmin, vmax=vmax, s=14, zorder=2)
            ax.annotate(str(rs[-1]["index"]), (xs[-1], ys[-1]), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("I(X;T) [nats]")
        ax.set_ylabel("I(T;Y) [nats]")
        ax.grid(alpha=0.3)
        fig.colorbar(sc, ax=ax, label="step")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Information planes (numbers: layer index, last step)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def layer_bars(runs: dict[str, list[dict]], path: Path) -> None:
    """Per-layer bars at each run's last recorded step: IB value (error bars: ``IB_sd``, the seed spread, where
    given), and the contraction ratio of IBNorm layers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    last = {n: [r for r in rs if r["step"] == max(x["step"] for x in rs)] for n, rs in runs.items()}
    layers = sorted({(r["index"], r["layer"]) for rs in last.values() for r in rs})
    width = 0.8 / len(names)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(layers) * len(names)), 6.4), sharex=True)
    for j, name in enumerate(names):
        by_index = {r["index"]: r for r in last[name]}
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(layers))]
        err = [by_index[ix].get("IB_sd", 0.0) if ix in by_index else 0 for ix, _ in layers]
        ax1.bar(xs, [by_index[ix]["IB"] if ix in by_index else 0 for ix, _ in layers], width, label=name,
                yerr=err if any(err) else None, error_kw={"elinewidth": 0.7, "capsize": 1.5})
        ax2.bar(xs, [float(by_index[ix]["contraction"]) if ix in by_index and by_index[ix]["contraction"] != "" else 0
                     for ix, _ in layers], width, label=name)
    ib = [(float(r["IB"]), float(r.get("IB_sd", 0.0))) for rs in last.values() for r in rs]
    lo, hi = min(v - e for v, e in ib), max(v + e for v, e in ib)
    ax1.set_ylim(lo - 0.15 * (hi - lo) - 1e-3, hi + 0.1 * (hi - lo) + 1e-3)  # zoomed: the differences are small
    ax1.set_ylabel(f"IB value I(T;Y) - {last[names[0]][0]['beta']:g} I(X;T)\n(axis does not start at 0)")
    ax2.set_ylabel("var(s(u)) / var(u)")
    ax2.set_xticks(range(len(layers)))
    ax2.set_xticklabels([f"{ix}" for ix, _ in layers])
    ax2.set_xlabel("layer index (norm layers in forward order; last = penultimate features)")
    ax1.legend(fontsize=7, ncol=len(names), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path)
