"""The deferral-accuracy curve as a PNG, for `demo` and `bench cascade`."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def plot_deferral_curve(curve: Sequence[Sequence[float]], points: Mapping[str, tuple[float, float]], path: Path,
                        title: str = "Deferral-accuracy curve") -> Path:
    """Draw accuracy against the share deferred to the cloud, with named points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = np.asarray(curve, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(curve[:, 0], curve[:, 1], color="tab:blue", label="cascade (defer least confident first)")
    markers = iter("osD^vP*X")
    for name, (rate, accuracy) in points.items():
        ax.scatter([rate], [accuracy], marker=next(markers, "o"), s=50, zorder=3, label=f"{name} ({accuracy:.3f} @ {rate:.0%})")
    ax.set_xlabel("share of queries deferred to the cloud")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
