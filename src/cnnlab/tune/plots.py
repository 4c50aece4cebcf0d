"""Tune plots with plain matplotlib (no plotly): optimisation history, parameter importances, parallel coordinates."""

from __future__ import annotations

from pathlib import Path


def save_tune_plots(study, complete: list, out: Path, objective: str) -> dict[str, str]:
    files = {}
    files["history_plot"] = _history(complete, study.direction.name == "MAXIMIZE", out / "history.png", objective)
    imp = _importances(study, complete, out / "importances.png")
    if imp:
        files["importances_plot"] = imp
    par = _parallel(complete, out / "parallel.png", objective)
    if par:
        files["parallel_plot"] = par
    return files


def _save(fig, path: Path) -> str:
    from cnnlab.plotting import save_figure

    return str(save_figure(fig, path))


def _history(complete: list, maximize: bool, path: Path, objective: str) -> str:
    """Each trial's value and the best so far, by trial number."""
    from cnnlab.plotting import plt

    xs = [t.number for t in complete]
    ys = [t.value for t in complete]
    best, cur = [], None
    for y in ys:
        cur = y if cur is None else (max(cur, y) if maximize else min(cur, y))
        best.append(cur)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys, "o", label="trial")
    ax.step(xs, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title("optimisation history")
    ax.legend()
    return _save(fig, path)


def _importances(study, complete: list, path: Path) -> str | None:
    """Optuna's parameter importances (its default evaluator); needs at least two complete trials with a varying parameter."""
    import optuna

    from cnnlab.plotting import plt

    if len(complete) < 2:
        return None
    import warnings

    try:
        with warnings.catch_warnings():  # "importances will be equal" on tiny studies: the plot says as much
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every complete trial has the same parameters
        return None
    if not imp:
        return None
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance (Optuna's default evaluator)")
    ax.set_title("parameter importances")
    return _save(fig, path)


def _parallel(complete: list, path: Path, objective: str) -> str | None:
    """One line per complete trial across parameter axes scaled to [0, 1]; colour = objective value."""
    import numpy as np

    from cnnlab.plotting import plt

    names = sorted({k for t in complete for k in t.params})
    if not names:
        return None
    cols = []
    ticks = []
    for n in names:
        vals = [t.params.get(n) for t in complete]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            lo, hi = min(vals), max(vals)
            log = lo > 0 and hi / lo > 20  # lr, weight decay: spread on a log axis like their search range
            f = (lambda v: float(np.log(v))) if log else float
            cols.append([(f(v) - f(lo)) / (f(hi) - f(lo)) if hi > lo else 0.5 for v in vals])
            ticks.append(f"{n}{' (log)' if log else ''}\n[{lo:.3g}, {hi:.3g}]")
        else:
            cats = sorted({str(v) for v in vals})
            cols.append([(cats.index(str(v)) / (len(cats) - 1)) if len(cats) > 1 else 0.5 for v in vals])
            ticks.append(f"{n}\n{'/'.join(cats)}"[:40])
    values = np.array([t.value for t in complete], dtype=float)
    span = float(values.max() - values.min()) or 1.0
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
    for i in range(len(complete)):
        ax.plot(range(len(names)), [c[i] for c in cols], color=cmap((values[i] - values.min()) / span), alpha=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(ticks, fontsize=7)
    ax.set_yticks([])
    ax.set_title(f"parallel coordinates (colour: {objective}, yellow = high)")
    return _save(fig, path)
