"""The verdict report's figures: small PNGs (matplotlib, Agg, 100 dpi) drawn from ``verdict.analyse``.

``draw_all(analysis, folder)`` writes each figure it has data for and returns
``{file name: written}``; the Markdown links only those written.
"""

from __future__ import annotations

import math
from pathlib import Path

DPI = 100


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def draw_all(an: dict, folder: Path) -> dict[str, bool]:
    try:
        _plt()
    except ImportError:
        return {}
    made = {}
    for name, draw in (("expected_max.png", expected_max), ("pairwise.png", pairwise), ("reruns.png", reruns),
                       ("importance.png", importance), ("schedules.png", schedules)):
        fig = draw(an)
        made[name] = fig is not None
        if fig is not None:
            save(fig, folder / name)
            _plt().close(fig)
    return made


def save(fig, path: Path) -> None:
    """A PNG in a 256-colour palette: line plots look the same at a third of the size."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    try:
        from PIL import Image

        image = Image.open(buffer).convert("RGB")
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, format="PNG", optimize=True)
    except Exception:  # noqa: BLE001 - Pillow missing or failing: the full-colour PNG
        path.write_bytes(buffer.getvalue())


def expected_max(an: dict):
    """E[max_k] (unbiased) per arm against k, each with its 95% bootstrap band; k only up to
    the arm's finished trials. Left: every k; right (when the arms have 8 trials or more): k
    from 4 on, zoomed in where the arms are told apart, with one validation example to scale."""
    arms = [r for r in an["arms"] if r["curve"]]
    if not arms:
        return None
    plt = _plt()
    n = max(r["n"] for r in arms)
    k0 = 4
    zoom = n >= 2 * k0
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(11, 4.2) if zoom else (7.5, 4.2), squeeze=False)
    colors = _colors(len(arms))
    for ax, first in zip(axes[0], (1, k0)):
        curves = [(r, [c for c in r["curve"] if c["k"] >= first], color) for r, color in zip(arms, colors)]
        curves = [(r, cs, color) for r, cs, color in curves if cs]
        for r, cs, color in curves:
            ks = [c["k"] for c in cs]
            ax.fill_between(ks, [c["low"] for c in cs], [c["high"] for c in cs], color=color, alpha=0.08, linewidth=0)
            ax.plot(ks, [c["unbiased"] for c in cs], color=color, label=f"{r['name']} (n={r['n']})", lw=1.8)
        ax.set_xscale("log", base=2)
        ticks = [2 ** i for i in range(int(math.log2(first)), int(math.log2(n)) + 1)]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlim(first, n)
        # Every curve whole; on the worse side the bands from k = 2 on only (k = 1's band, around
        # the mean, reaches far and would flatten the rest: it is in the table).
        ends = [c["unbiased"] for _, cs, _ in curves for c in cs]
        later = [c for r, cs, _ in curves for c in cs if c["k"] >= 2 or r["n"] == 1]
        every = [c for _, cs, _ in curves for c in cs]
        worse, better = ("low", "high") if an["maximize"] else ("high", "low")
        span = ends + [c[worse] for c in later] + [c[better] for c in every]
        lo, hi = min(span), max(span)
        pad = 0.05 * (hi - lo or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("k: trials of the search")
        ax.grid(alpha=0.3)
        res = an.get("resolution")
        if first > 1 and res and res < (hi - lo) / 2:  # one validation example, to scale
            x = n / 1.15
            y0 = lo + pad
            ax.plot([x, x], [y0, y0 + res], color="black", lw=2.5, solid_capstyle="butt")
            ax.text(x / 1.04, y0 + res / 2, "one validation\nexample", ha="right", va="center", fontsize=7)
    axes[0][0].set_ylabel(f"expected best {an['metric']}")
    axes[0][0].set_title("every k", fontsize=9)
    if zoom:
        axes[0][1].set_title(f"k >= {k0}, zoomed in", fontsize=9)
    fig.suptitle(f"Expected best {an['metric']} after k trials (unbiased estimator, {an['level']:.0%} bootstrap "
                 "bands)", fontsize=10)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def pairwise(an: dict):
    """P(best of k of the row's arm beats best of k of the column's) as a matrix, at the
    largest listed k every arm reaches."""
    from optsearch.search.verdict import _figure_k

    k = _figure_k(an)
    if k is None:
        return None
    cells = an["pairwise"][k]
    names = [r["name"] for r in an["arms"]]
    size = len(names)
    matrix = [[math.nan if a == b or not cells[a].get(b) else cells[a][b]["p"] for b in names] for a in names]
    plt = _plt()
    side = 1.5 + 0.62 * size
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(matrix, cmap="RdBu", vmin=0, vmax=1)
    for i in range(size):
        for j in range(size):
            v = matrix[i][j]
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(v - 0.5) > 0.3 else "black")
    ax.set_xticks(range(size), names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(size), names, fontsize=8)
    ax.set_title(f"P(best of {k} trials of row beats column)", fontsize=10)
    ax.set_ylabel("row: this arm's search")
    ax.set_xlabel("column: the other arm's search")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def reruns(an: dict):
    """Each arm's winner: the verdict metric on each seed (points; the same seed has the same
    marker in every arm) and its mean ± std."""
    arms = [r for r in an["arms"] if r["by_seed"]]
    if not arms:
        return None
    plt = _plt()
    seeds = sorted({s for r in arms for s in r["by_seed"]}, key=lambda s: an["seeds"].index(s)
                   if s in an["seeds"] else len(an["seeds"]))
    markers = "o^sDv<>ph*"
    fig, ax = plt.subplots(figsize=(max(5.5, 2.0 + 0.9 * len(arms)), 3.8))
    for x, (r, color) in enumerate(zip(arms, _colors(len(arms)))):
        for j, s in enumerate(seeds):
            if s in r["by_seed"]:
                ax.scatter(x + (j - (len(seeds) - 1) / 2) * 0.07, r["by_seed"][s], color=color, s=18,
                           marker=markers[j % len(markers)], alpha=0.8, linewidths=0)
        if r["verdict_std"] is not None:
            ax.errorbar(x + 0.32, r["verdict_mean"], yerr=r["verdict_std"], fmt="_", color="black", capsize=3,
                        markersize=10)
        else:
            ax.plot(x + 0.32, r["verdict_mean"], "_", color="black", markersize=10)
    ax.set_xticks(range(len(arms)), [r["name"] for r in arms], rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(arms) - 0.3)
    ax.set_ylabel(an["verdict_metric"])
    res = an.get("verdict_resolution")
    note = f"\none example = {res:.4f}" if res else ""
    ax.set_title(f"Each arm's winner: {an['verdict_metric']} per seed, and mean ± std{note}", fontsize=10)
    handles = [ax.scatter([], [], color="0.4", marker=markers[j % len(markers)], s=18) for j in range(len(seeds))]
    ax.legend(handles, [f"seed {j + 1}" for j in range(len(seeds))], loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize=7, frameon=False, title="same seed,\nsame marker", title_fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def importance(an: dict):
    """Per arm, the fANOVA importance of its searched knobs (the six largest)."""
    from optsearch.search.verdict import short_param

    arms = [r for r in an["arms"] if r["importances"]]
    if not arms:
        return None
    plt = _plt()
    cols = min(4, len(arms))
    rows = math.ceil(len(arms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat[len(arms):]:
        ax.axis("off")
    for ax, r, color in zip(axes.flat, arms, _colors(len(an["arms"]))):
        items = list(r["importances"].items())[:6][::-1]
        ax.barh(range(len(items)), [v for _, v in items], color=color)
        ax.set_yticks(range(len(items)), [short_param(k) for k, _ in items], fontsize=7)
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(r["name"], fontsize=9)
    fig.suptitle("fANOVA importance per arm (share of the variance explained)", fontsize=10)
    fig.tight_layout()
    return fig


def schedules(an: dict):
    """Each arm's winner: the lr (log scale) and momentum / beta1 at each step, against the
    fraction of training done."""
    arms = [(r, c) for r, c in zip(an["arms"], _colors(len(an["arms"]))) if r.get("schedule")]
    if not arms:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = ("-", "--", "-.", ":")  # arms whose curves coincide stay visible
    for i, (r, color) in enumerate(arms):
        lr = r["schedule"]["lr_step"]
        total = max(1, lr[-1][0])
        style = {"color": color, "lw": 1.5, "ls": styles[i % len(styles)], "label": r["name"]}
        ax1.plot([s / total for s, _ in lr], [v for _, v in lr], **style)
        mom = r["schedule"].get("momentum_step") or []
        if mom:
            ax2.plot([s / total for s, _ in mom], [v for _, v in mom], **style)
    ax1.set_yscale("log")
    peaks = [max(v for _, v in r["schedule"]["lr_step"]) for r, _ in arms]
    peaks = [p for p in peaks if p > 0]
    if peaks:  # three decades under the lowest peak: an annealed tail to 1e-8 would flatten the rest
        ax1.set_ylim(min(peaks) / 1e3, max(peaks) * 2)
    ax1.set_xlabel("fraction of training")
    ax1.set_ylabel("lr")
    ax1.set_title("lr per step (each arm's winner)", fontsize=10)
    ax2.set_xlabel("fraction of training")
    ax2.set_ylabel("momentum / beta1")
    ax2.set_title("momentum (SGD, Muon) or beta1 (Adam family)", fontsize=10)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
