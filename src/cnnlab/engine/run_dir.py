"""Run folders: where one training run writes everything a user wants afterwards.

    config.yaml        resolved config (`cnnlab train --config RUN/config.yaml` repeats the run)
    metrics.csv        one row per epoch
    run.json           status, versions, timings, dataset summary, final and test metrics
    model.safetensors  the trained model; best.safetensors: the best val-accuracy epoch's weights
    last.ckpt          full state for `cnnlab train --resume RUN`
    curves.png, samples.png, predictions.png, report.html, bad_files.txt
    tensorboard/, mlflow.json  experiment tracking (cnnlab/track), when on

`run.json` carries `status`: running -> completed | interrupted | failed | stopped. model.safetensors appears only
when training completed, so an unfinished run never looks finished.

RunFolder is the one type that knows this layout: the training loop writes through it, and resume, report,
compare and the model loaders read through it — config() as the typed TrainConfig, metrics() as rows of numbers.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from cnnlab.config import TrainConfig, config_from_dict, load_config_file
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.io import write_text_atomic

CONFIG, METRICS, RUN_JSON = "config.yaml", "metrics.csv", "run.json"
MODEL, BEST_MODEL, LAST_CKPT = "model.safetensors", "best.safetensors", "last.ckpt"
REPORT, BAD_FILES = "report.html", "bad_files.txt"
PLOTS = ("curves.png", "samples.png", "predictions.png")
RUN_MARKERS = (RUN_JSON, CONFIG, LAST_CKPT, MODEL)  # any of these: the folder already holds a run
METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


LOCK = ".lock"
_held: dict[Path, int] = {}  # run folder -> the open lock file descriptor this process holds


def _claim(path: Path) -> str | None:
    key = path.resolve()
    if key in _held:
        return None  # this process already owns it (e.g. the CLI claimed it before training)
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CnnlabError(f"{path}: cannot write the run folder ({e.strerror}) — choose a writable --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _lock_text(fd)
        os.close(fd)
        raise CnnlabError(f"{path}: in use by another cnnlab process ({holder or 'pid unknown'}) — wait for it to end, or choose another"
                          " --out") from None
    left = _lock_text(fd)  # written by an owner that ended without releasing: killed
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
    _held[key] = fd
    return f"{path}: took over the lock of {left}, which ended without releasing it (killed?)" if left else None


def _lock_text(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return ""
    return f"process {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}" if info.get("pid") else ""


def release(path: str | Path) -> None:
    """Give up this process's claim on a run folder (its lock file stays, empty: no owner)."""
    fd = _held.pop(Path(path).resolve(), None)
    if fd is not None:
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)  # explicitly: a forked child (a decoding worker) may still share this descriptor
        finally:
            os.close(fd)


def _new_numbered_dir(base: str | Path = "runs", name: str = "train") -> Path:
    """Create and return the first free runs/train, runs/train2, ...: made with mkdir, which fails if another
    process made it first, so two runs started at once get two folders."""
    base = Path(base)
    for i in range(1, 100000):
        p = base / (name if i == 1 else f"{name}{i}")
        try:
            base.mkdir(parents=True, exist_ok=True)
            p.mkdir()
            return p
        except FileExistsError:
            continue
        except OSError as e:
            raise CnnlabError(f"{p}: cannot make the run folder ({e.strerror}) — choose a writable --out") from None
    raise CnnlabError(f"{base}: too many runs named {name}")


def next_run_dir(base: str | Path = "runs", name: str = "train") -> Path:
    """runs/train, runs/train2, runs/train3, ... (the first free one)."""
    base = Path(base)
    for i in range(1, 100000):
        p = base / (name if i == 1 else f"{name}{i}")
        if not p.exists():
            return p
    raise CnnlabError(f"{base}: too many runs named {name}")


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"RUN/{name}")


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ---- opening

    @classmethod
    def create(cls, out: str | Path | None = None, overwrite: bool = False) -> "RunFolder":
        """Make a new run folder (`out`, or the next free runs/trainN) and claim it for this process (`claim`);
        refuse to mix two runs in one folder unless overwrite, which first removes the earlier run's files."""
        path = Path(out) if out is not None else _new_numbered_dir()
        if path.exists() and not path.is_dir():
            raise CnnlabError(f"{path}: exists and is a file — choose another --out")
        if not overwrite and path.is_dir() and any((path / m).exists() for m in RUN_MARKERS):  # refuse before touching anything
            raise CnnlabError(f"{path}: already holds a run — pass --overwrite to replace it, or choose another --out")
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".cnnlab-write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise CnnlabError(f"{path}: cannot write the run folder ({e.strerror}) — choose a writable --out") from None
        folder = cls(path)
        folder.claim()  # before looking inside: two runs started into one folder at once cannot both pass the check
        if any((path / m).exists() for m in RUN_MARKERS):
            if not overwrite:
                release(path)
                raise CnnlabError(f"{path}: already holds a run — pass --overwrite to replace it, or choose another --out")
            for m in RUN_MARKERS + (METRICS, BEST_MODEL, REPORT, BAD_FILES, "mlflow.json") + PLOTS:
                try:
                    (path / m).unlink()
                except FileNotFoundError:
                    pass
            shutil.rmtree(path / "tensorboard", ignore_errors=True)  # the earlier run's event files
        return folder

    def claim(self) -> str | None:
        """Make this process the folder's only writer until `release(path)` or the process ends: an exclusive
        flock on RUN/.lock (the kernel drops it when the process dies, so a killed run never blocks its resume).
        Another live process holding it is an error naming that process; a lock file a killed process left is taken
        over, and the note saying so is returned (and printed by the trainer)."""
        return _claim(self.path)

    @classmethod
    def open(cls, path: str | Path, need: tuple[str, ...] = ()) -> "RunFolder":
        """An existing run folder that holds the files in `need`; otherwise a CnnlabError naming what is missing."""
        folder = cls(Path(path))
        if not folder.path.is_dir():
            raise CnnlabError(f"{folder.path}: not a run folder — pass folders written by `cnnlab train`")
        for name in need:
            if not (folder.path / name).exists():
                raise CnnlabError(f"{folder.path}: missing {name} — not a complete run folder (was it trained with `cnnlab train`?)")
        return folder

    # ---- where things are (paths whether or not the file exists yet)

    config_yaml = _file(CONFIG)
    metrics_csv = _file(METRICS)
    run_json = _file(RUN_JSON)
    model_file = _file(MODEL)
    best_model_file = _file(BEST_MODEL)
    last_ckpt = _file(LAST_CKPT)
    report_html = _file(REPORT)
    bad_files_txt = _file(BAD_FILES)
    curves_png, samples_png, predictions_png = (_file(name) for name in PLOTS)

    def plots(self) -> dict[str, Path]:
        """The run's figures that exist, by file name."""
        return {name: self.path / name for name in PLOTS if (self.path / name).is_file()}

    # ---- reading

    def config(self) -> TrainConfig:
        """config.yaml as the typed TrainConfig; unknown keys and wrong types are errors naming the file."""
        if not self.config_yaml.is_file():
            raise ConfigError(f"{self.path}: missing {CONFIG} — not a complete run folder (was it trained with `cnnlab train`?)")
        try:
            values = load_config_file(self.config_yaml)
        except ConfigError as e:  # its messages start with the file name: say which run folder
            raise ConfigError(f"{self.path}/{e}") from None
        return config_from_dict(values, source=str(self.config_yaml))

    def metrics(self) -> list[dict]:
        """metrics.csv's rows in file order, by column: epoch an int, the rest floats, empty cells None."""
        try:
            with open(self.metrics_csv, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                return [{col: _metric_value(col, text, self.metrics_csv, reader.line_num) for col, text in row.items()} for row in reader]
        except FileNotFoundError:
            raise CnnlabError(f"{self.path}: missing {METRICS} — not a complete run folder (was it trained with `cnnlab train`?)") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise CnnlabError(f"{self.metrics_csv}: unreadable ({e.__class__.__name__}) — was the file edited by hand?") from None

    def info(self) -> dict:
        """run.json ({} before training wrote it); a CnnlabError when it is not a JSON object."""
        try:
            data = json.loads(self.run_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CnnlabError(f"{self.run_json}: not valid JSON ({e.__class__.__name__}) — was the file edited by hand?") from None
        if not isinstance(data, dict):
            raise CnnlabError(f"{self.run_json}: not a JSON object — was the file edited by hand?")
        return data

    def restart_command(self) -> str:
        """The command that starts this run again from the beginning, in this folder, as configured."""
        import shlex

        return f"cnnlab train --config {shlex.quote(str(self.config_yaml))} --out {shlex.quote(str(self.path))} --overwrite"

    def nothing_to_resume(self) -> str:
        """Why `--resume` cannot continue this folder (it has no last.ckpt), and what to do instead."""
        if not self.path.is_dir():
            return f"{self.path}: no checkpoint to resume from — there is no such run folder; pass the --out folder of an interrupted run"
        if self.config_yaml.is_file():
            return (f"{self.path}: no checkpoint to resume from — the run stopped before its first checkpoint was saved, so there"
                    f" is nothing to continue; start it again with: {self.restart_command()}")
        return (f"{self.path}: no checkpoint to resume from — the folder holds no run ({LAST_CKPT} and {CONFIG} are missing);"
                " pass the --out folder of an interrupted run")

    @property
    def status(self) -> str | None:
        """running | completed | interrupted | failed | stopped; None without a readable run.json."""
        return read_run_json(self.path).get("status")

    # ---- writing (atomic: a reader sees the old file or the new one)

    def write_config(self, cfg: TrainConfig) -> None:
        write_text_atomic(self.config_yaml, cfg.to_yaml())

    def write_metrics(self, rows: list[dict]) -> None:
        write_text_atomic(self.metrics_csv, metrics_csv_text(rows))

    def write_info(self, info: dict) -> None:
        write_text_atomic(self.run_json, json_text(info))

    def write_bad_files(self, bad: list[tuple[str, str]]) -> None:
        write_text_atomic(self.bad_files_txt, bad_files_text(self.bad_files_txt, bad))


def metric_text(value) -> str:
    """A value as metrics.csv writes it: floats to 6 significant digits, None as an empty cell."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _metric_value(column: str | None, text: str | None, path: Path, line: int) -> int | float | None:
    if column is None or text is None:
        raise CnnlabError(f"{path} line {line}: the row does not have one cell per column — was the file edited by hand?")
    if text == "":
        return None
    try:
        return int(text) if column == "epoch" else float(text)
    except ValueError:
        raise CnnlabError(f"{path} line {line}, column {column}: {text!r} is not a number — was the file edited by hand?") from None


def metrics_csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: metric_text(v) for k, v in r.items()})
    return buf.getvalue()


def json_text(data: dict) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"


def bad_files_text(path: Path, bad: list[tuple[str, str]]) -> str:
    """bad_files.txt: one `path<TAB>reason` line per skipped image; entries already in the file are kept (resume)."""
    lines: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            p, _, r = line.partition("\t")
            lines.setdefault(p, r)
    for p, r in bad:
        lines.setdefault(p, r)
    return "".join(f"{p}\t{r}\n" for p, r in lines.items())


# Path-level spellings that engine/trainer.py calls (and tests / tune read run.json through read_run_json); they
# write exactly what the RunFolder methods write. New code uses RunFolder.


def prepare_run_dir(out: str | Path | None, overwrite: bool = False) -> Path:
    return RunFolder.create(out, overwrite).path


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, metrics_csv_text(rows))


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json_text(data))


def write_bad_files(path: Path, bad: list[tuple[str, str]]) -> None:
    write_text_atomic(path, bad_files_text(path, bad))


def read_run_json(run_dir: str | Path) -> dict:
    """run.json, or {} when it is missing or unreadable (a status check never fails)."""
    try:
        data = json.loads((Path(run_dir) / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError
        return {}
    return data if isinstance(data, dict) else {}
