"""Training curves: read a training log whatever its layout, draw its losses and evaluations, and draw losses
live while a model trains in a notebook.

A log is JSON. Per-step numbers may come as a list of records (``[{"step": 0, "ce": 6.1, "mse": 1.9}, ...]``)
or as columns (``{"step": [...], "ce": [...], "mse": [...]}``), at the top level or under any key; periodic
evaluations the same way. ``tables`` finds every such block; columns whose names say *loss*, *ce* or *mse*
are losses, other numbers (accuracies, PSNR) are evaluations, and learning rates and timings are left out.
A log with no per-step numbers (the summary a trainer writes at the end) is drawn as its summary.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

STEP_KEYS = ("step", "steps", "iteration", "iter")
_SKIP = re.compile(r"(^|_)(lr|learning_rate|time|seconds|elapsed|tokens|epoch|seed|wall)($|_)")
_LOSS = re.compile(r"(^|_|/)(ce|mse|loss|nll)($|_|/)|loss")


@dataclass
class Table:
    """One block of a log: its path in the JSON, the steps, and the numeric columns measured at those steps."""

    where: str
    step: list[float]
    columns: dict[str, list[float]] = field(default_factory=dict)


def read_log(path: str | Path) -> dict:
    """The JSON log at ``path`` (micro-BAGEL's shipped run: ``micro.CHECKPOINT / "train_log.json"``)."""
    return json.loads(Path(path).read_text())


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _flat(record: dict) -> dict:
    """A record with nested dicts flattened one level (``{"eval": {"acc": 1}}`` -> ``{"acc": 1}``)."""
    out = {}
    for k, v in record.items():
        out.update({kk: vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return out


def _from_records(where: str, records: list) -> Table | None:
    rows = [_flat(r) for r in records if isinstance(r, dict)]
    key = next((k for k in STEP_KEYS if sum(k in r for r in rows) >= 2), None)
    if key is None:
        return None
    rows = [r for r in rows if is_number(r.get(key))]
    names = sorted({k for r in rows for k, v in r.items() if k != key and is_number(v)})
    table = Table(where, [float(r[key]) for r in rows])
    for name in names:  # a missing value becomes NaN so every column lines up with the steps
        table.columns[name] = [float(r[name]) if is_number(r.get(name)) else math.nan for r in rows]
    return table


def _from_columns(where: str, block: dict) -> Table | None:
    key = next((k for k in STEP_KEYS if isinstance(block.get(k), list) and len(block[k]) >= 2), None)
    if key is None:
        return None
    n = len(block[key])
    cols = {k: [float(x) if is_number(x) else math.nan for x in v] for k, v in block.items()
            if k != key and isinstance(v, list) and len(v) == n and any(is_number(x) for x in v)}
    return Table(where, [float(s) for s in block[key]], cols)


def tables(log, where: str = "", depth: int = 4) -> list[Table]:
    """Every per-step block in ``log`` (records or columns), searched ``depth`` levels deep."""
    found = []
    if isinstance(log, list):
        table = _from_records(where, log)
        return [table] if table else []
    if not isinstance(log, dict) or depth == 0:
        return []
    table = _from_columns(where, log)
    if table:
        found.append(table)
    for k, v in log.items():
        if isinstance(v, (dict, list)):
            found += tables(v, f"{where}.{k}" if where else k, depth - 1)
    return found


def split_columns(found: list[Table]) -> tuple[list[tuple[str, Table]], list[tuple[str, Table]]]:
    """(losses, evaluations): (column name, its table) pairs, skipping learning rates, timings and the like."""
    losses, evals = [], []
    for table in found:
        for name in table.columns:
            if _SKIP.search(name.lower()):
                continue
            (losses if _LOSS.search(name.lower()) else evals).append((name, table))
    return losses, evals


def summary(log: dict) -> dict[str, float]:
    """The top-level numbers of a log (what a trainer writes at the end)."""
    return {k: v for k, v in log.items() if is_number(v)}


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (NaNs skipped)."""
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - window + 1):i + 1] if not math.isnan(v)]
        out.append(sum(part) / len(part) if part else math.nan)
    return out


# --- drawing ----------------------------------------------------------------------------------------------

PANELS = {"ce": "cross-entropy on text (nats)", "mse": "MSE of the velocity", "loss": "other losses"}


def loss_panel(name: str) -> str:
    """Which panel a loss column goes to: "ce", "mse" or "loss"."""
    low = name.lower()
    if re.search(r"(^|_|/)(ce|nll|text)($|_|/)", low):
        return "ce"
    if re.search(r"(^|_|/)(mse|flow|velocity|vae)($|_|/)", low):
        return "mse"
    return "loss"


def mantissa(v: float) -> int:
    return round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0


def log_label(v: float, _=None) -> str:
    return f"{v:g}"


def draw_losses(axes: dict, steps: list[float], columns: dict[str, list[float]], *, window: int | None = None,
                label_suffix: str = "", fontsize: float = 12, guides: dict | None = None) -> None:
    """Each loss column on its panel (``axes[loss_panel(name)]``): raw values faint, a moving average bold.
    Values that are not positive (a step whose batch had no target for that loss) are left out.

    ``guides``: {column name: [(value, label), ...]} dashed horizontal reference lines.
    """
    from matplotlib.ticker import FuncFormatter

    window = window or max(1, len(steps) // 40)
    for name, lines in (guides or {}).items():
        for k, (value, label) in enumerate(lines):
            axes[loss_panel(name)].axhline(value, color=("k", "#55a868", "#8172b2")[k % 3], ls="--", lw=1.4,
                                           label=label)
    for name, values in columns.items():
        ax = axes[loss_panel(name)]
        values = positive_or_gap(values)  # a step without that loss (no answer tokens in its batch) is a gap, not a 0
        (line,) = ax.plot(steps, values, lw=0.8, alpha=0.3)
        ax.plot(steps, smooth(values, window), lw=2.2, color=line.get_color(),
                label=f"{name}{label_suffix} (mean of {window})" if window > 1 else f"{name}{label_suffix}")
    for key, ax in axes.items():
        if key in PANELS and ax.lines:
            ys = [y for line in ax.lines for y in line.get_ydata() if is_number(float(y)) and y > 0]
            ax.set_yscale("log")
            if ys:  # room above the highest and below the lowest point, so no curve touches the frame
                ax.set_ylim(min(ys) / 1.25, max(ys) * 1.3)
            ax.yaxis.set_major_formatter(FuncFormatter(log_label))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: log_label(v) if mantissa(v) in (2, 5) else ""))
            ax.set_title(PANELS[key], fontsize=fontsize)
            ax.set_xlabel("step", fontsize=fontsize)
            ax.legend(fontsize=fontsize * 0.8)
            ax.tick_params(labelsize=fontsize * 0.85)
            ax.grid(alpha=0.3, which="both")


def _draw_evals(ax, evals: list[tuple[str, Table]], fontsize: float) -> None:
    values = []
    for name, table in evals:
        ax.plot(table.step, table.columns[name], marker="o", ms=4, lw=1.6, label=name)
        values += [v for v in table.columns[name] if not math.isnan(v)]
    if values and 0 <= min(values) and max(values) <= 1:
        ax.set_ylim(-0.03, 1.03)
    ax.set_title("evaluation during training", fontsize=fontsize)
    ax.set_xlabel("step", fontsize=fontsize)
    ax.legend(fontsize=fontsize * 0.7, ncol=1 + len(evals) // 6)
    ax.tick_params(labelsize=fontsize * 0.85)
    ax.grid(alpha=0.3)


def _draw_summary(ax, log: dict, fontsize: float) -> None:
    numbers = summary(log)
    lines = ["This log has no per-step losses, only its summary:", ""]
    lines += [f"{k} = {v:g}" for k, v in numbers.items()]
    settings = log.get("settings")
    if isinstance(settings, dict):
        lines += ["", "settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if is_number(v))]
    ax.text(0.02, 0.95, "\n".join(lines), va="top", ha="left", fontsize=fontsize, family="monospace", wrap=True,
            transform=ax.transAxes)
    ax.axis("off")


def positive_or_gap(values: list) -> list[float]:
    """Per-step values for a log-scale axis: anything not a positive number becomes NaN (a gap)."""
    return [float(v) if is_number(v) and v > 0 else math.nan for v in values]


def plot_training_log(log: dict, fontsize: float = 12, title: str | None = None):
    """Draw a training log: one panel per kind of loss, one for evaluations; its summary if it has neither.

    (micro-BAGEL's own log has its two-panel view: ``micro.plots.plot_micro_log``.) Returns the figure (assign it:
    ``fig = plot_training_log(read_log())``).
    """
    import matplotlib.pyplot as plt

    losses, evals = split_columns(tables(log))
    kinds = [k for k in PANELS if any(loss_panel(n) == k for n, _ in losses)]
    n = len(kinds) + bool(evals)
    if n == 0:
        fig, ax = plt.subplots(figsize=(12, 3.6))
        _draw_summary(ax, log, fontsize)
    else:
        fig, axs = plt.subplots(1, n, figsize=(5.6 * n, 4.4), squeeze=False)
        axes = dict(zip(kinds + (["eval"] if evals else []), axs[0]))
        several = len({t.where for _, t in losses}) > 1
        for name, table in losses:
            draw_losses(axes, table.step, {name: table.columns[name]},
                        label_suffix=f" [{table.where}]" if several else "", fontsize=fontsize)
        if evals:
            _draw_evals(axes["eval"], evals, fontsize)
    if title:
        fig.suptitle(title, fontsize=fontsize * 1.15)
    fig.tight_layout()
    return fig


class LiveCurves:
    """Loss curves redrawn in place while a loop trains (one figure, updated through a display handle).

        live = LiveCurves(("ce", "mse"))
        for step in ...:
            live.add(step, ce=..., mse=...)
            if step % 20 == 0:
                live.show()
        live.close()          # the last state stays in the cell's output; no second copy
    """

    def __init__(self, names=("ce", "mse"), title: str = "training live", fontsize: float = 12,
                 guides: dict | None = None):
        self.names, self.title, self.fontsize, self.guides = tuple(names), title, fontsize, guides
        self.steps: list[float] = []
        self.values: dict[str, list[float]] = {n: [] for n in self.names}
        self._fig = self._handle = None

    def add(self, step: int, **values: float) -> None:
        self.steps.append(float(step))
        for name in self.names:
            self.values[name].append(float(values[name]))

    def draw(self):
        """(Re)draw the current curves; returns the figure."""
        import matplotlib.pyplot as plt

        kinds = list(dict.fromkeys(loss_panel(n) for n in self.names))
        if self._fig is None:
            self._fig, _ = plt.subplots(1, len(kinds), figsize=(5.6 * len(kinds), 4.2), squeeze=False)
        axs = self._fig.axes
        for ax in axs:
            ax.clear()
        draw_losses(dict(zip(kinds, axs)), self.steps, self.values, fontsize=self.fontsize, guides=self.guides)
        self._fig.suptitle(f"{self.title}: step {int(self.steps[-1]) if self.steps else 0}",
                           fontsize=self.fontsize * 1.1)
        self._fig.tight_layout()
        return self._fig

    def show(self) -> None:
        """Draw, and show the figure in the notebook (updating the same output after the first call)."""
        fig = self.draw()
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)

    def close(self):
        """Final update, then close the figure so the cell does not show it a second time; returns it."""
        import matplotlib.pyplot as plt

        if self._fig is not None:
            self.show()
            plt.close(self._fig)
        return self._fig
