"""MLflow logging: `--mlflow`, or MLFLOW_TRACKING_URI set, logs each run to MLflow.

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 cnnlab train --data D      # or sqlite:///mlflow.db, databricks, ...

What it logs (rank 0 only), through MlflowClient (never the fluent API's global active run, so it works inside a
user's own `mlflow.start_run()` block):
  params      the resolved config (dict fields as model_args.width, ...), at train start
  metrics     each epoch's metrics.csv row (train_loss, train_accuracy, val_loss, val_accuracy, lr, seconds) at
              step = epoch; at the end test_loss, test_accuracy, best_val_accuracy
  artifacts   model.safetensors (+ best.safetensors), config.yaml, metrics.csv, run.json and the PNGs at the end;
              report.html once it is written (log_report, which cnnlab.train calls after the report)
The experiment is MLFLOW_EXPERIMENT_ID / MLFLOW_EXPERIMENT_NAME when set, else "cnnlab"; the MLflow run is named
after the run folder, and RUN/mlflow.json says where it is, so `--resume` continues the same MLflow run.

MLflow never costs a run: a server that cannot be reached (checked with a short TCP connect before training, so no
minutes of HTTP retries) or a call that fails is one warning line on stderr, training goes on, and the run folder
is complete. Only `--mlflow` without the mlflow package is an error (exit 2), naming the pip install that fixes it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cnnlab._version import __version__
from cnnlab.engine.callbacks import Callback, RunView
from cnnlab.engine.distributed import is_main_process
from cnnlab.engine.run_dir import BEST_MODEL, CONFIG, METRICS, MODEL, PLOTS, REPORT, RUN_JSON, read_run_json
from cnnlab.errors import ConfigError
from cnnlab.io import write_text_atomic
from cnnlab.track.params import epoch_metrics, first_line, flat_params, warn

RECORD = "mlflow.json"  # in the run folder: tracking URI, experiment and run id of the run's MLflow copy
DEFAULT_EXPERIMENT = "cnnlab"
PROBE_TIMEOUT_S = 5.0  # the TCP connect that decides, before training, whether an HTTP tracking server is there
ARTIFACTS = (MODEL, BEST_MODEL, CONFIG, METRICS, RUN_JSON, *PLOTS)  # those that exist are logged at the end
INSTALL_HINT = "pip install mlflow (or pip install 'cnnlab[track]')"
MAX_BATCH = {"metrics": 1000, "params": 100}  # MLflow's log_batch limits


def mlflow_wanted(setting: bool | None) -> bool:
    """--mlflow (True), --no-mlflow (False), else (None) on when MLFLOW_TRACKING_URI is set."""
    return setting if setting is not None else bool(os.environ.get("MLFLOW_TRACKING_URI"))


def unreachable(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why an http(s) tracking server cannot be reached (refused, no such host, timeout), or None — also for other
    URIs (files, databases, databricks) and servers behind a proxy, which MLflow's own calls decide."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except socket.timeout:
        return f"no answer within {timeout_s:g}s"
    except (OSError, ValueError) as e:  # ValueError: a port out of range in the URI
        return getattr(e, "strerror", None) or first_line(e)
    return None


def _explain(uri: str, e: BaseException) -> str:
    text = str(e)
    if "MLFLOW_ALLOW_FILE_STORE" in text:  # MLflow 3.x refuses file: stores unless told otherwise
        return (f"this MLflow refuses the file store {uri} — set MLFLOW_ALLOW_FILE_STORE=true, or use a database such as "
                "MLFLOW_TRACKING_URI=sqlite:///mlflow.db")
    return first_line(e)


class MlflowTracker(Callback):
    """A Callback that logs the run to MLflow (see the module docstring). `required`: --mlflow was given, so a
    missing mlflow package is a ConfigError; otherwise (MLFLOW_TRACKING_URI alone) a warning."""

    def __init__(self, required: bool = True, tracking_uri: str | None = None):
        self.client = self.run_id = self.uri = self.experiment_id = None
        self.warned = False
        if not is_main_process():  # rank 0 logs for the run
            return
        try:
            import mlflow
            from mlflow.tracking import MlflowClient
        except ImportError:
            if required:
                raise ConfigError(f"--mlflow needs the mlflow package, which is not installed — {INSTALL_HINT}, or train without "
                                  "--mlflow") from None
            warn(f"MLFLOW_TRACKING_URI is set but the mlflow package is not installed — not logging to MLflow ({INSTALL_HINT}, "
                 "or train with --no-mlflow)")
            return
        # everything from here can only cost the MLflow copy, never the run, and is decided before training starts
        self.uri = tracking_uri or mlflow.get_tracking_uri()
        problem = unreachable(self.uri)
        if problem:
            self._give_up(f"MLflow server {self.uri} cannot be reached ({problem})")
            return
        try:
            client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or self._experiment(client)
        except Exception as e:  # noqa: BLE001 — MLflow, HTTP, database and file errors alike: MLflow is optional here
            self._give_up(f"MLflow at {self.uri}: {_explain(self.uri, e)}")
            return
        self.client = client

    @staticmethod
    def _experiment(client) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else client.create_experiment(name)

    # ---- hooks

    def on_train_start(self, run: RunView) -> None:
        if not run.is_main or self.client is None:
            return
        run_dir = Path(run.run_dir)

        def start(client) -> None:
            self.run_id = self._continued_run(client, run_dir)
            if self.run_id is None:
                tags = {"cnnlab.run_dir": str(run_dir.resolve()), "cnnlab.version": __version__, "mlflow.source.name": "cnnlab"}
                self.run_id = client.create_run(self.experiment_id, tags=tags, run_name=run_dir.name).info.run_id
                params = [(k, str(v)) for k, v in flat_params(run.config).items()]
                self._log_batch(client, params=params)
                for row in run.history:  # a resumed run's earlier epochs, when its MLflow copy starts now
                    self._log_row(client, row)
            record = {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id, "finished": False,
                      "run_started": read_run_json(run_dir).get("started")}  # log_report: this run's record, not an earlier run's
            write_text_atomic(run_dir / RECORD, json.dumps(record, indent=2) + "\n")

        self._call(start)

    def on_epoch_end(self, run: RunView, row: dict) -> None:
        if run.is_main and self.run_id is not None:
            self._call(lambda client: self._log_row(client, row))

    def on_train_end(self, run: RunView, test: dict | None) -> None:
        if not run.is_main or self.run_id is None:
            return
        run_dir = Path(run.run_dir)

        def finish(client) -> None:
            step = int(run.history[-1]["epoch"]) if run.history else 0
            final = {}
            if test:
                final.update(test_loss=test.get("loss"), test_accuracy=test.get("accuracy"))
            best = read_run_json(run_dir).get("best") or {}
            final["best_val_accuracy"] = best.get("accuracy")
            self._log_batch(client, metrics=[(k, float(v), step) for k, v in final.items() if isinstance(v, (int, float))])
            for name in ARTIFACTS:
                if (run_dir / name).is_file():
                    client.log_artifact(self.run_id, str(run_dir / name))
            client.set_terminated(self.run_id, "FINISHED")
            record = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
            write_text_atomic(run_dir / RECORD, json.dumps({**record, "finished": True}, indent=2) + "\n")

        self._call(finish)

    # ---- pieces

    def _continued_run(self, client, run_dir: Path) -> str | None:
        """On --resume: the MLflow run this run folder started, when it is on the same tracking server."""
        if not read_run_json(run_dir).get("resumed"):
            return None
        try:
            record = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if record.get("tracking_uri") != self.uri or not record.get("run_id"):
            return None
        try:
            client.update_run(record["run_id"], status="RUNNING")
        except Exception:  # noqa: BLE001 — deleted on the server: start a new MLflow run (it gets the history so far)
            return None
        return record["run_id"]

    def _log_row(self, client, row: dict) -> None:
        self._log_batch(client, metrics=[(k, v, int(row["epoch"])) for k, v in epoch_metrics(row).items()])

    def _log_batch(self, client, metrics: list[tuple[str, float, int]] = (), params: list[tuple[str, str]] = ()) -> None:
        from mlflow.entities import Metric, Param

        now_ms = int(time.time() * 1000)
        metrics = [Metric(k, v, now_ms, step) for k, v, step in metrics]
        params = [Param(k, v) for k, v in params]
        for i in range(0, len(metrics), MAX_BATCH["metrics"]):
            client.log_batch(self.run_id, metrics=metrics[i:i + MAX_BATCH["metrics"]])
        for i in range(0, len(params), MAX_BATCH["params"]):
            client.log_batch(self.run_id, params=params[i:i + MAX_BATCH["params"]])

    def _call(self, fn) -> None:
        """Run one round of MLflow calls; a failure is one warning and MLflow logging stops for this run."""
        if self.client is None:
            return
        try:
            fn(self.client)
        except Exception as e:  # noqa: BLE001 — see __init__
            self._give_up(f"MLflow logging to {self.uri} failed ({_explain(self.uri, e)})")

    def _give_up(self, why: str) -> None:
        self.client = None
        self.run_id = None
        if not self.warned:
            self.warned = True
            warn(f"{why} — training goes on without MLflow; the run folder has everything")


def log_report(run_dir: str | Path) -> None:
    """Add report.html to the run's MLflow copy (it is written after training ends). A no-op unless the run logged
    to MLflow to the end; a failure is a warning."""
    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not record.get("finished") or record.get("run_started") != read_run_json(run_dir).get("started") or not (run_dir / REPORT).is_file():
        return  # MLflow gave up, or the record is an earlier run's in a folder reused with --overwrite
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        return
    uri = record["tracking_uri"]
    problem = unreachable(uri)
    try:
        if problem:
            raise ConnectionError(problem)
        MlflowClient(tracking_uri=uri).log_artifact(record["run_id"], str(run_dir / REPORT))
    except Exception as e:  # noqa: BLE001 — the report is in the run folder either way
        warn(f"MLflow: report.html not logged to {uri} ({_explain(uri, e)}) — it is in {run_dir}")
