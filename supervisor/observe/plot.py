"""``yolo-supervisorctl plot``: loss and mAP curves over epochs with every interruption marked.

CLI side only: this module imports matplotlib (Agg backend, no display needed)
and is imported lazily by the ``plot`` command, never by the daemon.

Four panels share what the job's ``history`` and results.csv say:
- train losses, val losses and mAP per epoch (x = epochs completed; the row of
  epoch e is drawn at e). Each interruption of attempt k is a vertical line at
  the epoch attempt k+1 resumed from (its ``epochs_before``), labelled with the
  cause and the down time; epochs trained twice are shaded after it. A missing
  epoch leaves a gap in the curves, so a correctly resumed run is continuous.
- a wall-clock strip (time since submission): training, startup, down time
  (shaded, labelled with the cause of the death) and paused time.

``plot_run`` returns what it drew (read back from the figure's artists), which
is what the tests compare with the recorded attempts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from supervisor.results_csv import read_results  # noqa: E402 - also plot's: one reader of results.csv

FIGSIZE_IN = (8.0, 8.5)
DPI = 100
COLOURS = {"training": "#2ca02c", "startup": "#bbbbbb", "down": "#d62728", "paused": "#ffbf00"}
MARKER_GID = "interruption"


@dataclass(frozen=True)
class Marker:
    """An interruption line as drawn."""

    attempt: int
    cause: str
    epoch: float
    label: str


@dataclass(frozen=True)
class Band:
    """A stretch of the wall-clock strip, in seconds since submission."""

    kind: str
    start_s: float
    end_s: float
    attempt: Optional[int]
    cause: Optional[str]


@dataclass
class Drawn:
    path: Path
    size_px: tuple[int, int]
    epochs: list[int]                                   # x of the curves, one per results.csv epoch
    series: dict[str, list[float]] = field(default_factory=dict)
    markers: list[Marker] = field(default_factory=list)  # one per interruption, read back from the top panel
    bands: list[Band] = field(default_factory=list)
    duplicate_epochs: list[int] = field(default_factory=list)
    extensions: list[tuple[int, int]] = field(default_factory=list)  # (epochs before, new total) per extend


def _columns(rows: dict[int, dict[str, float]]) -> dict[str, list[str]]:
    names = list(next(iter(rows.values())).keys()) if rows else []
    return {
        "train losses": [c for c in names if c.startswith("train/")],
        "val losses": [c for c in names if c.startswith("val/")],
        "mAP": [c for c in names if c.startswith("metrics/mAP")],
    }


def plot_run(csv_text: str, history: dict[str, Any], out: Path) -> Drawn:
    """Draw the job's curves and interruptions (``history`` as the ``history`` request returns it) to ``out``."""
    rows, duplicates = read_results(csv_text)
    job, gp = history["job"], history["goodput"]
    last = max([job["epochs"], *rows.keys()]) if rows else job["epochs"]
    epochs = list(range(1, last + 1))
    fig, axes = plt.subplots(4, 1, figsize=FIGSIZE_IN, dpi=DPI, gridspec_kw={"height_ratios": [3, 3, 3, 1.2]})
    drawn = Drawn(Path(out), (int(FIGSIZE_IN[0] * DPI), int(FIGSIZE_IN[1] * DPI)), sorted(rows),
                  duplicate_epochs=duplicates)
    for ax, (title, cols) in zip(axes[:3], _columns(rows).items()):
        for col in cols:
            ys = [rows[e][col] if e in rows else math.nan for e in epochs]  # a missing epoch is a gap
            ax.plot(epochs, ys, marker=".", label=col.split("/", 1)[1])
            drawn.series[col] = [rows[e][col] for e in sorted(rows)]
        ax.set_ylabel(title)
        ax.set_xlim(0, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if cols:
            ax.legend(fontsize=7, loc="best")
    drawn.extensions = extensions(history.get("events") or [])
    for ax in axes[:3]:
        _draw_interruptions(ax, gp["interruptions"], label=ax is axes[0])
        _draw_extensions(ax, drawn.extensions, label=ax is axes[0])
    axes[2].set_xlabel("epochs completed")
    drawn.bands = _draw_timeline(axes[3], gp["segments"], job["created_at"])
    fraction = gp.get("training_fraction")
    fig.suptitle(f"{job['name']}: {job['state']}, {len(gp['interruptions'])} interruption(s), "
                 f"training {fraction * 100:.0f}% of {_duration(gp['wall_s'])}" if fraction is not None
                 else f"{job['name']}: {job['state']}", fontsize=11)
    fig.tight_layout()
    drawn.markers = _read_markers(axes[0])
    fig.savefig(out, dpi=DPI, format="png")
    plt.close(fig)
    return drawn


def _draw_interruptions(ax, interruptions: list[dict[str, Any]], label: bool) -> None:
    seen_at: dict[float, int] = {}
    for i in interruptions:
        x = float(i["resumed_epoch"])
        text = f"{i['cause']}\n{i['gap_kind']} {_duration(i['gap_s'])}" + ("" if i["resumed"] else "\n(not resumed)")
        line = ax.axvline(x, color=COLOURS["down"], linestyle="--", linewidth=1.2)
        line.set_gid(f"{MARKER_GID}:{i['attempt']}:{i['cause']}:{text}")
        if i["epochs_redone"]:
            ax.axvspan(x, x + i["epochs_redone"], color=COLOURS["down"], alpha=0.12, linewidth=0)
        if label:
            stack = seen_at.get(x, 0)  # several interruptions at one epoch: stack their labels
            seen_at[x] = stack + 1
            ax.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3 - 22 * stack),
                        textcoords="offset points", va="top", fontsize=7, color=COLOURS["down"])


def extensions(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(old epochs, new epochs) of every ``extend``, from the history's edit events."""
    out = []
    for e in events:
        data = e.get("data") or {}
        if e.get("kind") == "edit" and data.get("key") == "epochs":
            out.append((int(data["old"]), int(data["new"])))
    return out


def _draw_extensions(ax, marks: list[tuple[int, int]], label: bool) -> None:
    for old, new in marks:
        ax.axvline(old + 0.5, color=COLOURS["training"], linestyle=":", linewidth=1.2)
        if label:
            ax.annotate(f"extended\nto {new}", (old + 0.5, 0.0), xycoords=("data", "axes fraction"),
                        xytext=(3, 3), textcoords="offset points", va="bottom", fontsize=7,
                        color=COLOURS["training"])


def _read_markers(ax) -> list[Marker]:
    """The interruption lines actually on the panel, in drawing order."""
    out = []
    for line in ax.get_lines():
        gid = line.get_gid() or ""
        if gid.startswith(MARKER_GID + ":"):
            _, attempt, cause, text = gid.split(":", 3)
            out.append(Marker(int(attempt), cause, float(line.get_xdata()[0]), text))
    return out


def _draw_timeline(ax, segments: list[dict[str, Any]], origin: float) -> list[Band]:
    bands = [Band(s["kind"], s["start"] - origin, s["end"] - origin, s.get("attempt"), s.get("cause"))
             for s in segments]
    span = max([b.end_s for b in bands], default=1.0)
    unit, scale = ("seconds", 1) if span < 180 else ("minutes", 60) if span < 3 * 3600 else ("hours", 3600)
    for b in bands:
        ax.broken_barh([(b.start_s / scale, (b.end_s - b.start_s) / scale)], (0, 1), color=COLOURS[b.kind],
                       alpha=1.0 if b.kind == "training" else 0.55, linewidth=0)
        if b.kind in ("down", "paused") and b.cause:
            ax.text(b.start_s / scale, 1.05, b.cause, fontsize=7, color=COLOURS[b.kind], va="bottom")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=1.0 if k == "training" else 0.55)
               for k, c in COLOURS.items()]
    ax.legend(handles, list(COLOURS), fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.55),
              frameon=False)
    ax.set_ylim(0, 1.6)
    ax.set_yticks([])
    ax.set_xlim(0, span / scale)
    ax.set_xlabel(f"{unit} since submission")
    return bands


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
