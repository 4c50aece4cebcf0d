"""The training engine: one loop that reads top to bottom.

It owns *how* (device, precision, data order, checkpoints, signals, run folder); the model only says
*what* one forward pass computes. Data order comes from a generator seeded by (seed, epoch), so a run
interrupted mid-epoch resumes at the exact batch it stopped at.
"""

from __future__ import annotations

import math
import platform
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab import __version__
from cnnlab.config import TrainConfig
from cnnlab.data.augment import Augmenter, batch_generator, matched_test_scale, resolve_ops, soft_targets, training_size
from cnnlab.data.dataset import Dataset
from cnnlab.data.loader import BatchReader, is_streamed, read_images
from cnnlab.engine import distributed as ddp
from cnnlab.engine import finetune
from cnnlab.engine import run_dir as rd
from cnnlab.engine.checkpoint import save_checkpoint
from cnnlab.engine.device import autocast, cpu_description, resolve_device, resolve_precision
from cnnlab.engine.ema import ModelEMA
from cnnlab.engine.inference import (evaluate_arrays, evaluate_on_split, loss_fn, predicted_class, probabilities, to_input,
                                    tta_label, tta_scales)
from cnnlab.engine.model_file import model_metadata, save_model_file
from cnnlab.engine.schedule import LrSchedule
from cnnlab.errors import CnnlabError, ConfigError, TrainingError
from cnnlab.insight import plots
from cnnlab.models._registry import set_test_scale


class StopTraining(Exception):
    """Raised by an `on_epoch_end` callback to end the run after this epoch (e.g. a pruned tune trial).

    fit marks the run 'stopped' (last.ckpt is at the epoch boundary) and re-raises it to the caller.
    """


class Interrupted(Exception):
    """Raised from SIGINT/SIGTERM handlers so the loop can save before leaving."""


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module
    meta: dict
    history: list[dict] = field(default_factory=list)
    test: dict | None = None

    def __repr__(self) -> str:
        return f"TrainResult(run_dir={str(self.run_dir)!r}, epochs={len(self.history)}, test={self.test})"


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only: decaying norm scales and biases just hurts."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """adam | adamw | sgd (Nesterov momentum); 'auto' values are resolved for the model first. A pretrained model
    gets discriminative groups: its backbone learns at cfg.backbone_lr times the head's LR (group "lr_scale")."""
    cfg = cfg.resolved()
    if cfg.optimizer == "adam" and cfg.weight_decay == 0 and not is_pretrained(model):
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)  # the seed's optimizer, exactly
    if is_pretrained(model):
        groups = finetune.discriminative_groups(model, cfg.weight_decay, cfg.backbone_lr)
    else:
        groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.Adam(groups, lr=cfg.lr)


def is_pretrained(model: nn.Module) -> bool:
    """Started from pretrained weights (models/pretrained.load_pretrained), with a head to fine-tune."""
    return getattr(model, "cnnlab_pretrained", None) is not None and hasattr(model, "head_name")


def train_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against soft targets (N, K): mixup/cutmix, label smoothing; the 1-logit head uses BCE on p(class 1)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        per = F.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 1], reduction="none")
    else:
        per = -(targets * F.log_softmax(logits, 1)).sum(1)
    if weights is None:
        return per.mean()
    return (per * weights).sum() / weights.sum()


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised so a balanced dataset gets weight 1 everywhere."""
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).float()
    return len(y) / (num_classes * counts)


class _Progress:
    """A rich progress bar on a terminal; one line per epoch everywhere."""

    def __init__(self, quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=False, highlight=False)
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.bar = None

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        if not self.live:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console, transient=True)
        self.bar.start()
        self.task = self.bar.add_task("train", total=steps, completed=done, stats="")

    def step(self, loss: float, acc: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, stats=f"loss {loss:.4f} acc {acc:.1%}")

    def end_epoch(self, row: dict, epochs: int) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.quiet:
            return
        msg = f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.1%}"
        if row.get("val_loss") is not None:
            msg += f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.1%}"
        msg += f"  lr {row['lr']:.2g}  {row['seconds']:.1f}s"
        self.console.print(msg, soft_wrap=True)

    def print(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg, soft_wrap=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def fit(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    resume_state: dict | None = None,
    resume_dir: str | Path | None = None,
    quiet: bool = False,
    load_seconds: float | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    spent_seconds: float = 0.0,
) -> TrainResult:
    """Train `model` on `dataset` as `cfg` says and write a run folder. Returns a TrainResult.

    'auto' recipe values in cfg are resolved first (cfg.resolved()); the run folder records the result.
    In a distributed run (`--nproc N`, torchrun: see engine/distributed.py) every rank calls fit; the ranks
    split each global batch of cfg.batch_size images, and only rank 0 writes the run folder.
    """
    fit_t0 = time.perf_counter()  # the time budget counts wall time from here (set-up, checkpoints and all)
    cfg = cfg.validate().resolved()
    device = resolve_device(cfg.device)
    dist_ctx = ddp.setup(device)  # a no-op context in a single process
    device = dist_ctx.device
    main = dist_ctx.is_main
    precision = resolve_precision(cfg.precision, device, model)
    h, w, c = dataset.image_shape
    train_size = training_size(cfg.train_size, (h, w))  # crops of the loaded images at this size; evaluation sees them whole
    if train_size is not None and not hasattr(model, "test_scale"):
        raise ConfigError(f"--train-size {train_size} needs a global-pool model — {getattr(model, 'cnnlab_name', type(model).__name__)}'s "
                          f"fixed-size head takes {h}x{w} images only; leave --train-size out or choose another --model")
    augmenter = Augmenter(resolve_ops(cfg.augment, cfg.aug_args), train_size)
    run = Path(resume_dir) if resume_dir is not None else dist_ctx.on_main(lambda: rd.prepare_run_dir(out, overwrite))
    progress = _Progress(quiet or not main)

    if cfg.test_scale is None:  # FixRes: match the crop augmentation's magnification, for global-pool models
        auto_scale = hasattr(model, "test_scale") and train_size is None  # with --train-size the image size is the eval size
        cfg.test_scale = matched_test_scale(augmenter.ops, min(h, w)) if auto_scale else 1.0
    set_test_scale(model, cfg.test_scale)
    meta = model_metadata(model, dataset.class_names, (c, h, w), dataset=dataset.spec)
    norm = meta["normalization"]
    train, val = dataset.train, dataset.splits.get("val")
    has_val = val is not None and len(val) > 0
    reader = BatchReader(train)  # in memory: one uint8 tensor, indexed; streamed: worker processes decode batches ahead
    y_train = torch.from_numpy(train.y)
    n, bs, k = len(y_train), cfg.batch_size, dataset.num_classes
    steps = math.ceil(n / bs)
    weights = class_weights(y_train, k).to(device) if cfg.balance else None
    # the seed's plain loss unless the recipe needs soft targets (identical numbers for the seed pipeline)
    plain_loss = not (augmenter.ops["mixup"] or augmenter.ops["cutmix"] or cfg.label_smoothing or cfg.balance)

    # pretrained: the first n_frozen epochs train the head on features computed once (engine/finetune.py); the LR
    # schedule covers the unfrozen epochs after them, in which the earliest layers stay frozen (cfg.freeze_early)
    n_frozen = (cfg.freeze_epochs or 0) if is_pretrained(model) else 0
    if n_frozen < cfg.epochs and is_pretrained(model) and cfg.freeze_early:  # before DDP: it syncs only trainable parameters
        finetune.freeze_early_layers(model)
    model.to(device).train()
    net = dist_ctx.wrap(model)  # DDP in a distributed run: its backward averages the gradients over ranks
    optimizer = build_optimizer(model, cfg)
    # With a time budget the number of epochs is planned from measured speed (first batches, then each epoch)
    planned_epochs = cfg.epochs
    schedule = LrSchedule(cfg.schedule, max(1, planned_epochs - n_frozen) * steps)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema else None
    history: list[dict] = []
    best = {"accuracy": -1.0, "epoch": 0}
    best_weights: dict | None = None
    start_epoch, start_step, partial = 1, 0, None
    run_info = {
        "status": "running",
        "cnnlab_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{cpu_description()}, {torch.get_num_threads()} torch threads",
        "device": str(device),
        "precision": precision,
        "seed": cfg.seed,
        "dataset": dataset.summary(),
        "seconds": {"load": load_seconds},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if dist_ctx.distributed:
        run_info["distributed"] = dist_ctx.describe()
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        rng_ranks = resume_state.get("rng_torch_ranks") or []
        torch.set_rng_state(rng_ranks[dist_ctx.rank] if len(rng_ranks) == dist_ctx.world_size else resume_state["rng_torch"])
        history = list(resume_state["history"])
        start_epoch, start_step = resume_state["epoch"], resume_state["step"]
        partial = resume_state.get("partial") if main else None  # saved summed over ranks: rank 0 carries it on
        if resume_state.get("schedule"):
            schedule.load_state_dict(resume_state["schedule"])
            planned_epochs = min(cfg.epochs, int(resume_state["planned_epochs"]))
        if ema is not None and resume_state.get("ema"):
            ema.load_state_dict(resume_state["ema"])
        best = dict(resume_state.get("best") or best)
        best_weights = resume_state.get("best_weights")
        run_info.update({k: v for k, v in resume_state.get("run_info", {}).items() if k in ("started", "seconds")})
        run_info["resumed"] = run_info.get("resumed", 0) + 1
        progress.print(f"resuming {run} at epoch {start_epoch}, batch {start_step}/{steps}")
    else:
        seed_everything(cfg.seed + dist_ctx.rank, cfg.deterministic)  # per-rank streams (dropout); rank 0 = single process
        if main:
            (run / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
            _write_samples(dataset, run / "samples.png", cfg.seed)
            if dataset.bad_files:
                rd.write_bad_files(run / "bad_files.txt", dataset.bad_files)
    if main:
        rd.write_json(run / "run.json", run_info)
    if reader.streamed:
        progress.print(f"streaming {n:,} training images from disk, {reader.workers} decoding worker process(es)")
    if main:
        for note in dataset.notes:
            progress.print(note)

    def eval_model() -> nn.Module:
        return ema.module if ema is not None else model

    def score_split(m: nn.Module, split, tta: bool = False) -> dict:
        """Metrics (+ "index") of a split; distributed in-memory splits are sharded over the ranks and gathered."""
        if dist_ctx.distributed and not is_streamed(split):
            ev = dist_ctx.evaluate(evaluate_arrays, m, split.x, split.y, norm, device, precision, tta=tta)
            return {**ev, "index": np.arange(len(split))}
        return evaluate_on_split(m, split, norm, device, precision, tta=tta)

    def checkpoint(epoch: int, step: int, partial_stats: dict | None) -> None:
        rng_states = dist_ctx.rng_states()  # a collective: every rank calls checkpoint, rank 0 writes
        if not main:
            return
        save_checkpoint(run / "last.ckpt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng_torch": rng_states[0],
            "rng_torch_ranks": rng_states if dist_ctx.distributed else None,
            "epoch": epoch, "step": step, "partial": partial_stats, "history": history,
            "schedule": schedule.state_dict(), "planned_epochs": planned_epochs, "best": best,
            "ema": ema.state_dict() if ema is not None else None, "best_weights": best_weights,
            "config": cfg.to_dict(), "run_info": {k: run_info[k] for k in ("started", "seconds")},
        })

    # The time budget covers the whole run: loading (and the auto recipe's speed probe, both in load_seconds),
    # training, validation, and a reserve for the final test score and the files written at the end.
    n_test = len(dataset.splits["test"]) if "test" in dataset.splits else 0
    test_passes = 2 * len(tta_scales(model)) if cfg.tta else 1
    tail_s = 4.5  # ~3 s for the files and plots written at the end, ~1.5 s for the interpreter's exit
    reserve = [tail_s]  # + the test score's estimated time, once measured
    budget_used_before = dist_ctx.broadcast_number((load_seconds or 0.0) + spent_seconds) if cfg.time_budget is not None else 0.0

    def plan_epochs(done: int, seconds_per_epoch: float, elapsed: float) -> int:
        """How many epochs fit in the time budget, given the measured seconds per epoch."""
        left = cfg.time_budget - budget_used_before - reserve[0] - elapsed
        more = int(max(0.0, left) / max(seconds_per_epoch, 1e-9))
        return max(done, min(cfg.epochs, done + more))

    # The handler only raises a flag: the loop stops at the next batch boundary, where model, optimizer
    # and counters agree, so the saved state resumes exactly. A second signal leaves at once.
    stop_requested: list[str] = []

    def on_signal(signum, frame):
        stop_requested.append(signal.Signals(signum).name)
        if len(stop_requested) > 1:
            raise Interrupted(stop_requested[0])

    in_main_thread = threading.current_thread() is threading.main_thread()
    old_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
    for s in old_handlers:
        signal.signal(s, on_signal)

    def restore_handlers() -> None:
        for s, h_ in old_handlers.items():
            signal.signal(s, h_)

    train_seconds = sum(r["seconds"] for r in history)
    spent_earlier = train_seconds  # a resumed run's earlier epochs (their train + val time) count in the budget
    epoch_walls: list[float] = []  # wall seconds between epoch ends, checkpoint writes included
    wall_mark = time.perf_counter()

    def budget_elapsed() -> float:
        return dist_ctx.broadcast_number(spent_earlier + time.perf_counter() - fit_t0)  # rank 0's clock for every rank
    epoch, step, stats = start_epoch, start_step, partial
    stop_reason = None
    training_finished = False
    stopping_at_boundary = False  # set when all ranks agreed to stop before a batch: the state there resumes exactly
    try:
        if n_frozen and start_epoch <= n_frozen:  # pretrained: the head trains on the frozen backbone's features first
            frozen = _frozen_phase(model, dataset, norm, device, precision, n_frozen, weights, stop_requested, progress)
            dist_ctx.sync_parameters(model.get_submodule(model.head_name))  # every rank trained the same head; rank 0's is kept
            for row in frozen:
                history.append(row)
                train_seconds += row["seconds"]
                progress.end_epoch(row, planned_epochs)
                if has_val and row["val_accuracy"] > best["accuracy"]:
                    best = {"accuracy": row["val_accuracy"], "epoch": row["epoch"]}
                    best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if main:
                rd.write_metrics_csv(run / "metrics.csv", history)
            wall_mark = time.perf_counter()
            start_epoch = n_frozen + 1
            checkpoint(start_epoch, 0, None)
            if on_epoch_end is not None:
                for row in frozen:
                    on_epoch_end(dict(row))
            if cfg.time_budget is not None and planned_epochs > n_frozen:
                left = cfg.time_budget - budget_used_before - reserve[0] - budget_elapsed()
                if left <= 0:
                    planned_epochs = n_frozen
                    stop_reason = f"time budget of {cfg.time_budget:g}s reached after the frozen phase"
                    progress.print(stop_reason)
        epoch = start_epoch
        while epoch <= planned_epochs:
            t0 = time.perf_counter()
            order = epoch_order(n, cfg.seed, epoch)
            stats = stats or {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            progress.start_epoch(epoch, planned_epochs, steps, step)
            batches = reader.batches(bs, order, start=step)
            t_first = None
            for step in range(step, steps):
                stop = dist_ctx.stop_reason(stop_requested)  # distributed: a signal on any rank stops every rank here
                if stop:
                    stopping_at_boundary = True
                    raise Interrupted(stop)
                for group in optimizer.param_groups:  # the schedule is a pure function of the global step
                    group["lr"] = cfg.lr * group.get("lr_scale", 1.0) * schedule.factor((epoch - 1 - n_frozen) * steps + step)
                xb, yb, _ = next(batches)
                if not len(yb):
                    continue  # every file of this batch failed to decode (streamed data; recorded in bad_files; same on every rank)
                n_global = len(yb)
                share = dist_ctx.shard(torch.arange(n_global))  # this rank's share of the global batch
                if dist_ctx.distributed:
                    xb, yb = xb[share], yb[share]
                idx = share
                xb = to_input(xb, norm, device)
                yb = yb.to(device, non_blocking=True)
                y2, lam = None, 1.0
                if augmenter.enabled and len(idx):  # (a rank's share of a short last batch can be empty)
                    xb, y2, lam = augmenter(xb, yb, dist_ctx.rank_generator(batch_generator(cfg.seed, epoch, step)))
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with autocast(device, precision):
                    logits = net(xb)
                if plain_loss:
                    loss = loss_fn(logits, yb)
                else:
                    w_b = None if weights is None else weights[yb] * lam + (0 if y2 is None else weights[y2] * (1 - lam))
                    loss = train_loss(logits, soft_targets(yb, k, y2, lam, cfg.label_smoothing).to(device), w_b)
                if not dist_ctx.all_finite(loss, len(idx)):  # distributed: on every rank
                    raise TrainingError(
                        f"loss became {float(loss.detach()) if len(idx) and not torch.isfinite(loss) else 'non-finite on another rank'} at epoch {epoch}, batch {step + 1} — lower the learning rate (--lr);"
                        + (f" the last good state is in {run / 'last.ckpt'}" if (run / "last.ckpt").exists()
                           else " no checkpoint was saved yet (it diverged in the first epoch)")
                    )
                optimizer.zero_grad(set_to_none=True)
                dist_ctx.scale_loss(loss, logits, len(idx), n_global).backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                if ema is not None:
                    ema.update(model)
                stats["loss_sum"] += float(loss.detach()) * len(idx) if len(idx) else 0.0  # a rank's share may be empty
                stats["correct"] += int((predicted_class(logits.detach()) == yb).sum())
                stats["seen"] += len(idx)
                progress.step(stats["loss_sum"] / max(stats["seen"], 1), stats["correct"] / max(stats["seen"], 1))
                # time budget, first epoch: estimate the epoch time from batches 2-5 (batch 1 pays warm-up costs)
                if cfg.time_budget is not None and epoch == n_frozen + 1 and len(history) == n_frozen:
                    if step == start_step:
                        t_first = time.perf_counter()
                    elif t_first is not None and step == start_step + 4:
                        per_batch = (time.perf_counter() - t_first) / 4
                        est = dist_ctx.broadcast_number(per_batch * steps * (1 + (0.35 * len(val) / n if has_val else 0)))
                        # inference ~1/3 of a step (rank 0's figure, so every rank plans the same epochs)
                        reserve[0] = dist_ctx.broadcast_number(tail_s + 0.35 * per_batch / bs * n_test * test_passes)
                        if est > 1.5 * cfg.time_budget:
                            raise ConfigError(f"--time-budget {cfg.time_budget:g}s is too short for one epoch (about {est:.0f}s here)"
                                              " — raise it, or use a smaller model, image size or dataset")
                        planned_epochs = plan_epochs(n_frozen, est, dist_ctx.broadcast_number(spent_earlier + wall_mark - fit_t0))
                        schedule.total_steps = max(1, planned_epochs - n_frozen) * steps
            step = steps
            stats["seconds"] += time.perf_counter() - t0
            stats = dist_ctx.reduce_stats(stats)  # summed over ranks: the numbers one process would count
            t_val = time.perf_counter()
            row = {"epoch": epoch, "train_loss": stats["loss_sum"] / stats["seen"], "train_accuracy": stats["correct"] / stats["seen"],
                   "val_loss": None, "val_accuracy": None, "lr": optimizer.param_groups[0]["lr"], "seconds": stats["seconds"]}
            if has_val:
                ev = score_split(eval_model(), val)
                row.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"])
                reserve[0] = dist_ctx.broadcast_number(tail_s + (time.perf_counter() - t_val) / len(val) * n_test * test_passes)
            row["seconds"] = dist_ctx.broadcast_number(stats["seconds"] + (time.perf_counter() - t_val))  # time-budget plans agree
            history.append(row)
            train_seconds += row["seconds"]
            progress.end_epoch(row, planned_epochs)
            if main:
                rd.write_metrics_csv(run / "metrics.csv", history)
                if dataset.bad_files:  # streamed files that failed to decode this epoch join the list
                    rd.write_bad_files(run / "bad_files.txt", dataset.bad_files)
            schedule.epoch_end(row["val_loss"])
            if has_val and row["val_accuracy"] > best["accuracy"]:  # kept in memory and last.ckpt; written at the end
                best = {"accuracy": row["val_accuracy"], "epoch": epoch}
                best_weights = {k: v.detach().clone() for k, v in eval_model().state_dict().items()}
            if cfg.time_budget is not None:
                now = time.perf_counter()
                epoch_walls.append(now - wall_mark)
                wall_mark = now
                recent = epoch_walls[1:] or epoch_walls  # the first epoch pays warm-up costs
                replanned = plan_epochs(epoch, dist_ctx.broadcast_number(sum(recent) / len(recent)), budget_elapsed())
                # shorten any time; lengthen only in the first half, or extra epochs would run at the schedule's tail LR
                if replanned < planned_epochs or epoch < planned_epochs / 2:
                    planned_epochs = replanned
                schedule.total_steps = max(1, planned_epochs - n_frozen) * steps
                if planned_epochs <= epoch < cfg.epochs:
                    stop_reason = f"time budget of {cfg.time_budget:g}s reached"
            # early stopping counts unfrozen epochs only: the frozen phase's best is where fine-tuning starts from
            if cfg.patience and has_val and epoch - max(best["epoch"], n_frozen) >= cfg.patience:
                stop_reason = f"early stopping: no better val accuracy for {cfg.patience} epochs (best {best['accuracy']:.1%} at epoch {best['epoch']})"
            step, stats, partial = 0, None, None
            epoch += 1
            checkpoint(epoch, 0, None)
            if on_epoch_end is not None:  # after the checkpoint: a StopTraining here leaves a resumable run
                on_epoch_end(dict(row))
            if stop_reason:
                progress.print(stop_reason)
                break
        epoch -= 1
        training_finished = True
    except (Interrupted, KeyboardInterrupt) as e:
        progress.stop()
        if stats is not None and step < steps and stopping_at_boundary:
            stats["seconds"] += time.perf_counter() - t0
            checkpoint(epoch, step, dist_ctx.reduce_stats(stats))
        run_info["status"] = "interrupted"
        if main:
            rd.write_json(run / "run.json", run_info)
        why = e.args[0] if isinstance(e, Interrupted) and e.args else "SIGINT"
        if main and not (run / "last.ckpt").exists():  # e.g. during a pretrained model's feature extraction
            raise TrainingError(f"training interrupted ({why}) before the first checkpoint — nothing to resume; start the run again"
                                " (add --overwrite to reuse the run folder)") from None
        raise TrainingError(f"training interrupted ({why}); state saved in {run / 'last.ckpt'} — resume with: {dist_ctx.resume_command(run)}") from None
    except StopTraining:
        progress.stop()
        run_info["status"] = "stopped"
        if main:
            rd.write_json(run / "run.json", run_info)
        raise
    except (CnnlabError, RuntimeError) as e:
        lost = dist_ctx.lost_contact(e, run)  # a collective failed: another rank died or hung
        if lost is None and not isinstance(e, CnnlabError):
            raise
        progress.stop()
        run_info["status"] = "failed"
        if main:
            rd.write_json(run / "run.json", run_info)
        if lost is not None:
            raise lost from None
        raise
    finally:
        if not training_finished:  # leaving with an error or a stop: the caller gets its handlers back now
            restore_handlers()
            dist_ctx.close()

    # A stop signal during the final writes (a few seconds) is noted and the run completes: the handlers stay
    # installed until the model file and run.json are written, so the run never ends half-finished.
    try:
        # ---- finished: score the test split (with TTA when cfg.tta: inference.tta_scales), write model file, plots and run.json
        model = eval_model()
        t_eval = time.perf_counter()
        test = None
        if "test" in dataset.splits and len(dataset.splits["test"]):
            ts = dataset.splits["test"]
            ev = score_split(model, ts, tta=bool(cfg.tta))
            test = {"loss": ev["loss"], "accuracy": ev["accuracy"], "n": ev["n"], "split": "test", "tta": bool(cfg.tta)}
            if main:
                _write_predictions(ts, ev["logits"], dataset.class_names, run / "predictions.png", cfg.seed, ev["index"])
            progress.print(f"test  loss {test['loss']:.4f}  accuracy {test['accuracy']:.1%}  ({test['n']} images{', ' + tta_label(model) if cfg.tta else ''})")
        elif has_val:
            ev = score_split(model, val)
            if main:
                _write_predictions(val, ev["logits"], dataset.class_names, run / "predictions.png", cfg.seed, ev["index"])
        eval_seconds = time.perf_counter() - t_eval
        dist_ctx.close()  # no collectives from here on: other ranks are done, rank 0 writes the run folder
        if not main:
            return TrainResult(run, model.eval(), meta, history, test)
        final = history[-1] if history else {}
        meta["metrics"] = {"val_accuracy": final.get("val_accuracy"), "test_accuracy": test["accuracy"] if test else None}
        meta["config"] = cfg.to_dict()
        save_model_file(run / "model.safetensors", model, meta)
        if best_weights is not None:  # the weights of the epoch with the best val accuracy (EMA weights with --ema)
            final_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best_weights)
            save_model_file(run / "best.safetensors", model, {**meta, "metrics": {"val_accuracy": best["accuracy"], "epoch": best["epoch"]}})
            model.load_state_dict(final_weights)
        plots.save_curves(history, run / "curves.png")
        run_info.update({
            "status": "completed",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": {"load": load_seconds, "train": round(train_seconds, 3), "evaluate": round(eval_seconds, 3)},
            "train_images_per_second": round(n * len(history) / max(train_seconds, 1e-9), 1),
            "final": final,
            "test": test,
            "best": best if has_val else None,
            "stopped": stop_reason,
            "dataset": dataset.summary(),
        })
        rd.write_json(run / "run.json", run_info)
    finally:
        restore_handlers()
        dist_ctx.close()
    if stop_requested:
        progress.print(f"{stop_requested[0]} arrived while the finished run was being written; the run completed first")
    return TrainResult(run, model.eval(), meta, history, test)


def _frozen_phase(model: nn.Module, dataset: Dataset, norm: dict, device, precision: str, n_frozen: int,
                  weights: torch.Tensor | None, stop_requested: list, progress: "_Progress") -> list[dict]:
    """Train the new head of a pretrained model for n_frozen epochs on the frozen backbone's features, computed
    once per image; the backbone's weights and BatchNorm statistics
    stay exactly as loaded. Returns the epochs' metrics rows; the first row's seconds include the extraction."""

    def should_stop() -> None:  # signals stop the extraction between batches
        if stop_requested:
            raise Interrupted(stop_requested[0])

    t0 = time.perf_counter()
    train, val = dataset.train, dataset.splits.get("val")
    f, y = finetune.pooled_features(model, train, norm, device, precision, should_stop=should_stop)
    val_fy = finetune.pooled_features(model, val, norm, device, precision, should_stop=should_stop) if val is not None and len(val) else None
    extract_s = time.perf_counter() - t0
    progress.print(f"frozen backbone: features of {len(y):,} training images computed once in {extract_s:.1f}s; "
                   f"the head is fitted on them (logistic regression, {n_frozen} epoch(s) of L-BFGS)")
    rows = finetune.train_head(model, f, y, n_frozen, weights=None if weights is None else weights.cpu(), val=val_fy)
    for i, row in enumerate(rows):
        row["epoch"] = i + 1
        row["phase"] = "frozen"
    rows[0]["seconds"] += extract_s
    return rows


def _write_samples(dataset: Dataset, path: Path, seed: int, n: int = 16) -> None:
    tr = dataset.train
    idx = np.random.default_rng(seed).choice(len(tr), size=min(n, len(tr)), replace=False)
    x, y = read_images(tr, idx)
    plots.save_grid(x, [dataset.class_names[i] for i in y], path, suptitle="training samples")


def _write_predictions(split, logits: torch.Tensor, names: list[str], path: Path, seed: int, index: np.ndarray, n: int = 16) -> None:
    """`index`: the split positions of the rows of `logits` (streamed files that failed to decode have none)."""
    idx = np.random.default_rng(seed).choice(len(logits), size=min(n, len(logits)), replace=False)
    probs = probabilities(logits[idx])
    pred = probs.argmax(1).numpy()
    x, y = read_images(split, index[idx])
    titles, colours = plots.prediction_titles(pred, probs.max(1).values.numpy(), y, names)
    plots.save_grid(x, titles, path, colours, suptitle="predictions (red: wrong)")
