"""`cnnlab tune`: Optuna (TPE) over cnnlab's TrainConfig; each trial is one training run (engine/session.py) with its report.

Storage is Optuna's RDB storage: SQLite in the tune folder by default, or any SQLAlchemy URL
(`postgresql://user@host/db`), which lets several `cnnlab tune` processes on any machines share one
study: Optuna hands each process its own trial numbers, so no trial runs twice and counts add up.
A trial that raises (NaN loss -> TrainingError, a crash) is recorded as FAIL with its reason in the
trial's `error` attribute; the study goes on. Trials report their validation score after every epoch
(fit's `on_epoch_end`), so the pruner (median or successive halving) can stop poor trials early.
The tune folder receives best_config.yaml (accepted by `cnnlab train --config`), trials.csv and three
plots; they cover every trial of the study, including those of other processes.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cnnlab.config import TrainConfig
from cnnlab.engine.io import write_text_atomic
from cnnlab.engine.trainer import StopTraining
from cnnlab.errors import CnnlabError, ConfigError, TrainingError
from cnnlab.tune import space as sp

OBJECTIVES = {"val_accuracy": "maximize", "val_loss": "minimize"}
PRUNERS = ("median", "halving", "none")


@dataclass
class TuneResult:
    out: Path
    study_name: str
    storage: str  # password masked
    best: dict | None  # {"number", "value", "params", "config"} of the best complete trial, or None
    counts: dict[str, int] = field(default_factory=dict)  # trials of the whole study by state
    ran: int = 0  # trials this process ran
    files: dict[str, str] = field(default_factory=dict)


def mask_url(url: str) -> str:
    """The storage URL with any password replaced (it appears in messages and files)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str):
    """Optuna RDB storage for `url`; unreachable servers and missing drivers become ConfigError (exit 2)."""
    import optuna
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in seconds, not minutes
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ImportError as e:  # Optuna wraps the driver's ModuleNotFoundError
        missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "?"
        raise ConfigError(f"--storage {mask_url(url)}: the database driver {missing!r} is not installed"
                          " — for PostgreSQL: pip install 'cnnlab[tune-pg]' (psycopg 3)") from None
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"--storage {mask_url(url)!r} is not a database URL — e.g. sqlite:///tune.db or postgresql://user:pw@host:5432/db") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0][:200]
        raise ConfigError(f"--storage {mask_url(url)}: cannot open the study database ({reason})"
                          " — check that the server runs and the host, port, database and credentials are right") from None


def open_study(storage, name: str, direction: str, objective: str, resume: bool, sampler, pruner, url: str):
    """Create the study (a name already in the storage is an error without --resume) or load it with --resume."""
    import optuna

    if resume:
        try:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise ConfigError(f"--resume: no study named {name!r} in {mask_url(url)}"
                              f" (studies there: {', '.join(names) or 'none'}) — check --study and --storage") from None
        have = study.user_attrs.get("objective")
        if have and have != objective:
            raise ConfigError(f"study {name!r} optimises {have}, not {objective} — pass --objective {have}")
        return study
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigError(f"a study named {name!r} already exists in {mask_url(url)} — continue it with --resume,"
                          " or pick another --study NAME") from None
    study.set_user_attr("objective", objective)
    return study


def make_pruner(kind: str):
    """Per-epoch pruning: each trial reports its validation score after every epoch (step = epoch)."""
    import optuna

    if kind == "median":  # stop a trial whose epoch-e score is worse than the median of earlier trials at epoch e
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if kind == "halving":  # successive halving: keep the best third at epochs 1, 3, 9, ...
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def tune(data, trials: int | None, *, out: str | Path = "runs/tune", space: dict[str, sp.Param] | None = None,
         storage: str | None = None, study: str = "cnnlab", resume: bool = False, objective: str = "val_accuracy",
         timeout_s: float | None = None, pruner: str = "median", sampler_seed: int | None = None,
         base: TrainConfig | None = None, log: Callable[[str], None] = print) -> TuneResult:
    """Run `trials` trials (in this process) of a study; write best_config.yaml, trials.csv and plots to `out`.

    `data` is a Dataset or SPEC (loaded once); `base` holds the fixed values every trial starts from.
    `space` defaults to the built-in space minus the keys fixed in `base` by the caller.
    """
    import optuna

    from cnnlab.data.dataset import Dataset
    from cnnlab.engine import session
    from cnnlab.insight.report import write_run_report
    from cnnlab.track import log_report

    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective!r} is invalid — choose {' or '.join(OBJECTIVES)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner!r} is invalid — choose one of {', '.join(PRUNERS)}")
    if trials is not None and trials < 1 or timeout_s is not None and not timeout_s > 0:
        raise ConfigError("--trials must be >= 1 and --timeout > 0 seconds")
    if trials is None and timeout_s is None:
        raise ConfigError("give --trials N and/or --timeout SECONDS, or the study would never end")
    base = base or TrainConfig()
    space = space if space is not None else sp.default_space()
    sp.check_models(space, base)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"

    ds = data if isinstance(data, Dataset) else session.load_dataset(data, **{k: getattr(base, k) for k in session.DATA_KEYS})
    base = session.config_for(base.model, ds, base=base)
    if ds.multi_label:  # the objectives (val accuracy, val loss) and pruning are single-label
        raise ConfigError(f"{ds.spec}: cnnlab tune does not take multi-label data yet — train with cnnlab train (the best epoch is"
                          " chosen by val mAP)")
    if "val" not in ds.splits or not len(ds.splits["val"]):
        raise ConfigError(f"{ds.spec}: tuning needs a validation split — pass --val-split 0.1 or data with a val/ folder")

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trial lines are printed below, one per trial
    rdb = open_storage(url)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    st = open_study(rdb, study, OBJECTIVES[objective], objective, resume, sampler, make_pruner(pruner), url)
    log(f"study {study!r} in {mask_url(url)}: {len(st.trials)} earlier trials; searching "
        + "; ".join(p.describe() for p in space.values()))

    def objective_fn(trial) -> float:
        run_dir = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        try:
            cfg = sp.apply(sp.sample(space, trial), base, f"trial {trial.number}")
            trial.set_user_attr("config", cfg.to_dict())
            result, _ = session.train(cfg.model, ds, config=cfg, out=run_dir, overwrite=True, quiet=True,
                                      on_epoch_end=lambda row: report_epoch(trial, row))
            write_run_report(result, ds)
            log_report(result.run_dir)
            values = [r[objective] for r in result.history if r.get(objective) is not None]
            value = (max if objective == "val_accuracy" else min)(values) if values else float("nan")
            if not math.isfinite(value):
                raise TrainingError(f"{objective} is {value} — the trial produced no finite validation score")
            return value
        except StopTraining:  # pruned after an epoch: Optuna records the trial as PRUNED, not failed
            raise optuna.TrialPruned() from None
        except Exception as e:  # recorded on the trial, then Optuna marks it FAIL and the study goes on
            reason = str(e) if isinstance(e, CnnlabError) else f"{type(e).__name__}: {e}"
            trial.set_user_attr("error", reason.strip().splitlines()[0][:500] if reason.strip() else type(e).__name__)
            if _interrupted(run_dir):
                raise KeyboardInterrupt from None
            raise

    def report_epoch(trial, row: dict) -> None:
        value = row.get(objective)
        if value is None or not math.isfinite(value):
            return
        trial.report(value, row["epoch"])
        if trial.should_prune():
            raise StopTraining(f"pruned after epoch {row['epoch']}")

    ran = [0]

    def report(study_, frozen) -> None:
        ran[0] += 1
        state = frozen.state.name.lower()
        if state == "complete":
            best = study_.best_trial
            log(f"trial {frozen.number}: {objective} {frozen.value:.4f}  {_fmt_params(frozen.params)}"
                f"   (best {best.value:.4f}, trial {best.number})")
        elif state == "fail":
            log(f"trial {frozen.number}: failed — {frozen.user_attrs.get('error', 'unknown error')}")
        else:
            log(f"trial {frozen.number}: {state} after epoch {frozen.last_step}")

    try:
        st.optimize(objective_fn, n_trials=trials, timeout=timeout_s, catch=(Exception,), callbacks=[report],
                    gc_after_trial=True)
    finally:
        result = write_outputs(st, out, objective, url)
        result.ran = ran[0]
    if result.best is None:
        raise TrainingError(f"no trial of study {study!r} completed ({result.counts}) — see {out / 'trials.csv'} for the reasons")
    return result


def _interrupted(run_dir: Path) -> bool:
    from cnnlab.engine.run_dir import read_run_json

    try:
        return read_run_json(run_dir).get("status") == "interrupted"
    except Exception:
        return False


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def write_outputs(study, out: Path, objective: str, url: str) -> TuneResult:
    """trials.csv, best_config.yaml and plots for every trial of the study (all processes)."""
    import yaml

    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    files = {"trials_csv": str(out / "trials.csv")}
    write_text_atomic(out / "trials.csv", trials_csv(trials, objective))
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = None
    if complete:
        bt = study.best_trial
        best = {"number": bt.number, "value": bt.value, "params": bt.params, "config": bt.user_attrs.get("config")}
        header = (f"# best trial {bt.number} of study {study.study_name!r}: {objective} {bt.value:.4f}\n"
                  f"# train it: cnnlab train --config {out / 'best_config.yaml'}\n")
        write_text_atomic(out / "best_config.yaml", header + yaml.safe_dump(best["config"], sort_keys=False))
        files["best_config"] = str(out / "best_config.yaml")
        from cnnlab.tune.plots import save_tune_plots

        files.update(save_tune_plots(study, complete, out, objective))
    return TuneResult(out, study.study_name, mask_url(url), best, counts, 0, files)


def trials_csv(trials, objective: str) -> str:
    names = sorted({k for t in trials for k in t.params})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", objective, "epochs_reported", "seconds", *names, "error", "run_dir"])
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        w.writerow([t.number, t.state.name.lower(), "" if t.value is None else t.value, len(t.intermediate_values),
                    f"{seconds:.2f}" if seconds != "" else "", *[t.params.get(n, "") for n in names],
                    t.user_attrs.get("error", ""), t.user_attrs.get("run_dir", "")])
    return buf.getvalue()
