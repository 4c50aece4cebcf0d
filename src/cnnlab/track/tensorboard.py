"""TensorBoard logging into RUN/tensorboard, as Lightning's default logger does: on when the `tensorboard` package
is installed (`--no-tensorboard` turns it off; `--tensorboard` insists and fails clearly without it).

    tensorboard --logdir runs/        # every run folder's tensorboard/ is one run in the UI

What it writes, through torch.utils.tensorboard.SummaryWriter, on rank 0 only:
  train/batch_loss                  each batch's training loss, at the global batch number (1-based)
  train/loss, train/accuracy, val/loss, val/accuracy, lr, time/epoch_seconds    each epoch, at the epoch number
  hparams (the config) with final/val_accuracy, final/val_loss, final/test_accuracy, final/test_loss
  images samples, predictions (the run folder's PNGs) and confusion_matrix, with the confusion counts as text
A resumed run appends to the same folder and hides the batch losses logged after its checkpoint (purge_step).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from cnnlab.data.dataset import Dataset
from cnnlab.engine.callbacks import Callback, RunView
from cnnlab.engine.run_dir import MODEL, read_run_json
from cnnlab.errors import ConfigError
from cnnlab.track.params import EPOCH_METRICS, epoch_metrics, first_line, flat_params, warn

LOG_DIR = "tensorboard"  # inside the run folder
EVENT_FILES = "events.out.tfevents.*"
IMAGES = {"samples": "samples.png", "predictions": "predictions.png"}  # tag -> the run folder's figure
EVAL_BATCH = 64  # the confusion matrix's evaluation batch (as report.html's)
MAX_TEXT_CLASSES = 50  # the counts as a text table up to this many classes (the image always)
INSTALL_HINT = "pip install tensorboard (or pip install 'cnnlab[track]')"


def summary_writer_class(required: bool):
    """torch's SummaryWriter, or None when the tensorboard package is missing; `required` (--tensorboard) makes that
    a ConfigError that says which pip install fixes it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if required:
            raise ConfigError(f"--tensorboard needs the tensorboard package, which is not installed — {INSTALL_HINT}, "
                              "or train with --no-tensorboard") from None
        return None
    return SummaryWriter


class TensorBoardTracker(Callback):
    """A Callback that logs the run to RUN/tensorboard (see the module docstring).

    `dataset`: the dataset being trained on — it numbers the batches across epochs (resume-exact) and gives the
    confusion matrix its images (test split, else val); without it batches are counted from 1 and there is no
    confusion matrix. `required`: an unwritable folder is an error (exit 2) instead of a warning.
    """

    def __init__(self, dataset: Dataset | None = None, required: bool = True, writer_class=None):
        self.writer_class = writer_class or summary_writer_class(required=True)
        self.dataset, self.required = dataset, required
        self.writer = None
        self.steps_per_epoch: int | None = None
        self.batches = 0  # batches seen, when steps_per_epoch is unknown

    # ---- hooks

    def on_train_start(self, run: RunView) -> None:
        if not run.is_main:
            return
        log_dir = Path(run.run_dir) / LOG_DIR
        if self.dataset is not None:
            self.steps_per_epoch = max(1, math.ceil(len(self.dataset.train) / run.config.batch_size))
        resumed = bool(read_run_json(run.run_dir).get("resumed"))
        purge_step = self._global_step(run.epoch, run.step) if resumed and self.steps_per_epoch else None
        try:
            if not resumed:  # --overwrite keeps the folder: an earlier run's events would mix with this one's
                for old in log_dir.glob(EVENT_FILES) if log_dir.is_dir() else []:
                    old.unlink()
            self.writer = self.writer_class(str(log_dir), purge_step=purge_step)
        except OSError as e:
            message = (f"{log_dir}: cannot write TensorBoard logs there ({e.strerror or first_line(e)}) — make the folder writable, "
                       "or train with --no-tensorboard")
            if self.required:
                raise ConfigError(message) from None
            warn(message + "; training goes on without TensorBoard")
            self.writer = None

    def on_batch_end(self, run: RunView, loss: float) -> None:
        if self.writer is None:
            return
        self.batches += 1
        if math.isfinite(loss):  # nan: every file of a streamed batch failed to decode
            self._log(lambda w: w.add_scalar("train/batch_loss", loss, self._global_step(run.epoch, run.step)))

    def on_epoch_end(self, run: RunView, row: dict) -> None:
        if self.writer is None:
            return

        def log(w) -> None:
            for key, value in epoch_metrics(row).items():
                w.add_scalar(EPOCH_METRICS[key], value, row["epoch"])
            w.flush()  # a live `tensorboard` sees each epoch as it ends

        self._log(log)

    def on_train_end(self, run: RunView, test: dict | None) -> None:
        if self.writer is None:
            return
        final = run.history[-1] if run.history else {}
        epoch = int(final.get("epoch", 0))
        self._log(lambda w: self._log_hparams(w, run, final, test, epoch))
        self._log(lambda w: self._log_images(w, run, epoch))
        self._log(lambda w: w.close())
        self.writer = None

    # ---- pieces

    def _global_step(self, epoch: int, step: int) -> int:
        """The batch's number across epochs, 1-based (a resumed run continues the count)."""
        if self.steps_per_epoch is None:
            return self.batches
        return (epoch - 1) * self.steps_per_epoch + step + 1

    def _log(self, write) -> None:
        """Run one write; a failure (disk full, folder removed) is one warning, and TensorBoard logging stops."""
        if self.writer is None:
            return
        try:
            write(self.writer)
        except Exception as e:  # noqa: BLE001 — a logger never ends a run; the run folder has everything
            warn(f"TensorBoard logging failed ({first_line(e)}) — training goes on without it; the run folder has everything")
            self.writer = None

    @staticmethod
    def _log_hparams(w, run: RunView, final: dict, test: dict | None, epoch: int) -> None:
        """The config as the hparams plugin's session, with the final metrics as its metric columns (written into
        this event file, as Lightning does, so `--logdir runs/` compares runs in the HPARAMS tab)."""
        from torch.utils.tensorboard.summary import hparams

        metrics = {"final/val_accuracy": final.get("val_accuracy"), "final/val_loss": final.get("val_loss")}
        if test:
            metrics.update({"final/test_accuracy": test.get("accuracy"), "final/test_loss": test.get("loss")})
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for summary in hparams(flat_params(run.config), metrics):
            w._get_file_writer().add_summary(summary)
        for tag, value in metrics.items():
            w.add_scalar(tag, value, epoch)

    def _log_images(self, w, run: RunView, epoch: int) -> None:
        from PIL import Image

        for tag, name in IMAGES.items():
            path = Path(run.run_dir) / name
            if path.is_file():
                with Image.open(path) as im:
                    w.add_image(tag, np.asarray(im.convert("RGB")), epoch, dataformats="HWC")
        cm = self._confusion(run)
        if cm is not None:
            split, names, counts = cm
            png = confusion_png(names, counts, f"confusion matrix ({split}, {int(counts.sum())} images)")
            with Image.open(io.BytesIO(png)) as im:
                w.add_image("confusion_matrix", np.asarray(im.convert("RGB")), epoch, dataformats="HWC")
            if len(names) <= MAX_TEXT_CLASSES:
                w.add_text("confusion_matrix", confusion_markdown(split, names, counts), epoch)

    def _confusion(self, run: RunView) -> tuple[str, list[str], np.ndarray] | None:
        """(split, class names, counts[true, predicted]) of the saved model (model.safetensors: the EMA weights with
        --ema) on the test split, else val; None without a dataset or either split."""
        ds = self.dataset
        split = next((s for s in ("test", "val") if ds is not None and s in ds.splits and len(ds.splits[s])), None)
        if split is None or ds.multi_label:  # several labels per image: no confusion matrix
            return None
        import torch

        from cnnlab.engine.inference import evaluate_on_split, predicted_class
        from cnnlab.engine.predictor import Classifier

        device = next(run.model.parameters()).device
        clf = Classifier.load(Path(run.run_dir) / MODEL, str(device))
        ev = evaluate_on_split(clf.model, ds.splits[split], clf.meta["normalization"], clf.device, "fp32", EVAL_BATCH)
        truth = torch.as_tensor(np.asarray(ds.splits[split].y)[ev["index"]], dtype=torch.long)
        pred = predicted_class(ev["logits"]).cpu()
        k = len(ds.class_names)
        counts = torch.bincount(truth * k + pred, minlength=k * k).reshape(k, k).numpy()
        return split, list(ds.class_names), counts


def confusion_png(names: list[str], counts: np.ndarray, title: str) -> bytes:
    """The confusion matrix as report.html draws it, as PNG bytes."""
    from cnnlab.plotting import confusion_figure, figure_png

    return figure_png(confusion_figure(names, counts, title))


def confusion_markdown(split: str, names: list[str], counts: np.ndarray) -> str:
    """The counts as a Markdown table (TensorBoard's TEXT tab renders it): rows true classes, columns predicted."""
    lines = [f"{split} split: rows = true class, columns = predicted class", "",
             "| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(int(c)) for c in row) + " |" for name, row in zip(names, counts)]
    return "\n".join(lines)
