"""The training engine: one loop that reads top to bottom.

It owns *how* (device, precision, data order, checkpoints, signals, run folder); the model only says
*what* one forward pass computes. Data order comes from a generator seeded by (seed, epoch), so a run
interrupted mid-epoch resumes at the exact batch it stopped at.

Read it in this order: `train_step` (one optimizer step: shard, augment, forward, loss, backward), `train_one_epoch`
(the batches of one epoch, stoppable between any two), then `fit` (set-up, the epochs, the final files). The time
budget lives in engine/budget.py, checkpoint capture/restore in engine/checkpoint.py, signal handling in
engine/signals.py, the progress display in engine/progress.py, a pretrained model's frozen phase in engine/finetune.py.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from cnnlab.config import TrainConfig
from cnnlab.data.augment import Augmenter, batch_generator, matched_test_scale, resolve_ops, training_size
from cnnlab.data.dataset import Dataset
from cnnlab.data.loader import BatchReader, is_streamed
from cnnlab.engine import distributed as ddp
from cnnlab.engine import finetune
from cnnlab.engine import run_dir as rd
from cnnlab.engine.budget import TimeBudget
from cnnlab.engine.callbacks import Callback, CallbackList, RunView
from cnnlab.engine.checkpoint import CheckpointEvery, TrainState, capture_state, restore_state, save_checkpoint
from cnnlab.engine.device import autocast, resolve_device, resolve_precision
from cnnlab.engine.ema import ModelEMA
from cnnlab.engine.inference import correct_count, evaluate_arrays, evaluate_on_split, loss_fn, to_input, tta_scales
from cnnlab.engine import multilabel
from cnnlab.engine import run_outputs
from cnnlab.engine.model_file import model_metadata
from cnnlab.engine.optim import (balanced_sample_weights, build_optimizer, class_weights, is_pretrained, loss_weights,  # noqa: F401
                                 train_loss, train_targets)
from cnnlab.engine.progress import Progress
from cnnlab.engine.schedule import LrSchedule
from cnnlab.engine.signals import Interrupted, Signalled, StopAtBoundary, StopRequests, handling
from cnnlab.errors import CnnlabError, ConfigError, TrainingError, TrainingInterrupted
from cnnlab import plotting as plots
from cnnlab.models._registry import set_test_scale

__all__ = ["fit", "train_step", "train_one_epoch", "StepContext", "TrainResult", "StopTraining", "Interrupted"]


class StopTraining(Exception):
    """Raised by an `on_epoch_end` callback to end the run after this epoch (e.g. a pruned tune trial).

    fit marks the run 'stopped' (last.ckpt is at the epoch boundary) and re-raises it to the caller.
    """


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module
    meta: dict
    history: list[dict] = field(default_factory=list)
    test: dict | None = None

    def __repr__(self) -> str:
        return f"TrainResult(run_dir={str(self.run_dir)!r}, epochs={len(self.history)}, test={self.test})"

    def plot_curves(self):
        """Loss and accuracy (and the learning rate) per epoch, train vs validation, as a matplotlib Figure
        (Jupyter shows it inline; `fig.savefig(path)` saves it). The same figure as RUN/curves.png."""
        return plots.curves_figure(self.history)

    def best_val(self) -> dict | None:
        """{"accuracy", "epoch"} of the epoch with the best validation accuracy (None without validation)."""
        rows = [r for r in self.history if isinstance(r.get("val_accuracy"), (int, float)) and math.isfinite(r["val_accuracy"])]
        best = max(rows, key=lambda r: r["val_accuracy"], default=None)  # the first of equal ones, as training keeps
        return None if best is None else {"accuracy": best["val_accuracy"], "epoch": best["epoch"]}

    def _repr_html_(self) -> str:
        """Jupyter's view of a run: model, data, epochs, final and best val accuracy, test accuracy, the run folder
        and links to its report.html."""
        import html
        import os

        def pct(v) -> str:
            return "-" if not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.1%}"

        def link(path: Path, text: str) -> str:  # relative when under the notebook's folder: Jupyter serves it
            p = Path(path).resolve()
            try:
                href = Path(os.path.relpath(p, Path.cwd())).as_posix()
                href = href if not href.startswith("..") else p.as_uri()
            except ValueError:  # another drive (Windows)
                href = p.as_uri()
            return f'<a href="{html.escape(href)}" target="_blank">{html.escape(text)}</a>'

        cfg = self.meta.get("config") or {}
        final = self.history[-1] if self.history else {}
        best = self.best_val()
        test = self.test or {}
        report = Path(self.run_dir) / rd.REPORT
        rows = [
            ("model", html.escape(str(cfg.get("model") or self.meta.get("model", "?")))),
            ("data", html.escape(f"{cfg.get('data', '?')} ({len(self.meta.get('class_names', []))} classes: "
                                 f"{', '.join(map(str, self.meta.get('class_names', [])))})")),
            ("epochs", str(len(self.history))),
            ("final val accuracy", pct(final.get("val_accuracy"))),
            ("best val accuracy", "-" if best is None else f"{pct(best['accuracy'])} (epoch {best['epoch']})"),
            ("test accuracy", "-" if not test else f"{pct(test.get('accuracy'))} on {test.get('n')} images"
                                                  + (" (TTA)" if test.get("tta") else "")),
            ("run folder", link(Path(self.run_dir), str(Path(self.run_dir).resolve()))),
            ("report", link(report, rd.REPORT) if report.exists() else "not written (rebuild it with <code>cnnlab report RUN</code>)"),
        ]
        body = "".join(f'<tr><th style="text-align:left">{k}</th><td style="text-align:left">{v}</td></tr>' for k, v in rows)
        return f"<table><caption style='text-align:left'><b>cnnlab run {html.escape(Path(self.run_dir).name)}</b></caption>{body}</table>"


def epoch_order(n: int, seed: int, epoch: int, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The epoch's order of the n training images, a function of (seed, epoch) only, so a resumed run sees the same.
    sample_weights (--balance sampler): n draws with replacement, image i with probability ∝ sample_weights[i]."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if sample_weights is not None:
        return torch.multinomial(sample_weights, n, replacement=True, generator=g)
    return torch.randperm(n, generator=g)


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


# ---------------------------------------------------------------------------- one step, one epoch


@dataclass
class StepContext:
    """Everything one optimizer step needs, built once per run — by fit, the LR range test and the speed probe."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    norm: dict  # input normalisation (mean/std), the model's own for pretrained weights
    device: torch.device
    precision: str
    num_classes: int
    augmenter: Augmenter | None = None
    weights: torch.Tensor | None = None  # per-class loss weights (--balance loss, --class-weights)
    sample_weights: torch.Tensor | None = None  # per-image draw weights of each epoch's order (--balance sampler)
    ema: ModelEMA | None = None
    dist: ddp.Context | None = None  # None: a single process
    net: nn.Module | None = None  # what runs the forward pass: the model, or its DDP wrapper in a distributed run
    run: Path | None = None  # named in the divergence error (where the last good state is)
    check_finite: bool = True  # fit stops on a NaN/inf loss; the LR range test watches the loss itself
    scaler: torch.amp.GradScaler | None = None  # fp16: set up here (its state goes into checkpoints)
    plain_loss: bool = field(init=False)

    def __post_init__(self) -> None:
        self.dist = self.dist or ddp.Context(self.device)
        self.net = self.net or self.model
        if self.augmenter is not None and self.augmenter.norm is None:
            self.augmenter.norm = self.norm  # colour ops and the policies run on pixel values (data/augment.py)
        if self.precision == "fp16" and self.scaler is None:
            # fp16 gradients below ~6e-8 flush to zero: scale the loss up for backward, unscale before the step
            # (steps whose gradients overflowed are skipped and the scale lowered; bf16 has fp32's range and needs none)
            self.scaler = torch.amp.GradScaler(self.device.type)
        ops = self.augmenter.ops if self.augmenter is not None else {}
        # the seed's plain loss unless the recipe needs soft targets (identical numbers for the seed pipeline)
        self.plain_loss = not (ops.get("mixup") or ops.get("cutmix") or self.cfg.label_smoothing or self.weights is not None)


def train_step(ctx: StepContext, xb: torch.Tensor, yb: torch.Tensor, generator: torch.Generator | None = None,
               where: tuple[int, int] = (1, 0), *, share_of_step: float = 1.0, update: bool = True, zero_grad: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One optimizer step on a global batch: uint8 NHWC images `xb`, class ids `yb`. `generator` draws the
    augmentation; `where` (epoch, batch) names the step in errors. Returns this rank's detached loss, logits,
    labels (on the device) and number of images.

    Gradient accumulation calls it once per batch of the step: `share_of_step` (the batch's share of the step's
    images) weights its loss, `update=False` leaves the gradients to add up, and the caller zeroes them first."""
    cfg, dist = ctx.cfg, ctx.dist
    # 1. this rank's share of the global batch (a distributed run splits every batch over the ranks)
    n_global = len(yb)
    share = dist.shard(torch.arange(n_global))
    if dist.distributed:
        xb, yb = xb[share], yb[share]
    n = len(share)
    # 2. to the device: normalised float, channels-last
    xb = to_input(xb, ctx.norm, ctx.device)
    yb = yb.to(ctx.device, non_blocking=True)
    # 3. augmentation, on the device; mixup/cutmix also return partner labels y2 and the mixing weight lam
    y2, lam = None, 1.0
    if ctx.augmenter is not None and ctx.augmenter.enabled and n:  # (a rank's share of a short last batch can be empty)
        xb, y2, lam = ctx.augmenter(xb, yb, dist.rank_generator(generator))
        xb = xb.contiguous(memory_format=torch.channels_last)
    # 4. forward pass and loss, in the run's precision
    with autocast(ctx.device, ctx.precision):
        logits = ctx.net(xb)
    if ctx.plain_loss:
        loss = loss_fn(logits, yb)
    else:
        w = ctx.weights
        w_b = None if w is None else w[yb] * lam + (0 if y2 is None else w[y2] * (1 - lam))
        loss = train_loss(logits, train_targets(yb, ctx.num_classes, y2, lam, cfg.label_smoothing).to(ctx.device), w_b,
                          multi_label=yb.ndim == 2)
    # 5. a NaN/inf loss (on any rank) ends the run before it reaches the weights
    if ctx.check_finite and not dist.all_finite(loss, n):
        raise _diverged(ctx, loss, n, where)
    # 6. backward (DDP averages the gradients over the ranks; fp16 scales the loss), then the update
    if zero_grad:
        ctx.optimizer.zero_grad(set_to_none=True)
    scaled = dist.scale_loss(loss, logits, n, n_global)
    if share_of_step != 1.0:
        scaled = scaled * share_of_step
    (ctx.scaler.scale(scaled) if ctx.scaler is not None else scaled).backward()
    if update:
        optimizer_step(ctx)
    return loss.detach(), logits.detach(), yb, n


def optimizer_step(ctx: StepContext) -> None:
    """Clip the gradients, step (fp16: unscaled, skipped when they overflowed), update the weights' moving average."""
    if ctx.cfg.grad_clip > 0:
        if ctx.scaler is not None:
            ctx.scaler.unscale_(ctx.optimizer)  # clip the true gradients
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), ctx.cfg.grad_clip)
    if ctx.scaler is not None:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        ctx.optimizer.step()
    if ctx.ema is not None:
        ctx.ema.update(ctx.model)


def _diverged(ctx: StepContext, loss: torch.Tensor, n: int, where: tuple[int, int]) -> TrainingError:
    epoch, step = where
    value = float(loss.detach()) if n and not torch.isfinite(loss) else "non-finite on another rank"
    saved = ctx.run is not None and (ctx.run / "last.ckpt").exists()
    return TrainingError(f"loss became {value} at epoch {epoch}, batch {step + 1} — lower the learning rate (--lr);"
                         + (f" the last good state is in {ctx.run / 'last.ckpt'}" if saved
                            else " no checkpoint was saved yet (it diverged in the first epoch)"))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    """Every group at base_lr × factor × its own scale (a pretrained backbone's groups learn slower: "lr_scale")."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_scale", 1.0) * factor


def new_epoch_stats() -> dict:
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


def train_one_epoch(ctx: StepContext, reader: BatchReader, state: TrainState, steps: int, lr_factor: Callable[[int], float],
                    stops: StopRequests, after_batch: Callable[[int, dict, float], bool] | None = None,
                    checkpoint_due: Callable[[int, dict, float], None] | None = None) -> dict:
    """Train epoch `state.epoch` from batch `state.step` to its end. `state.step` and `state.partial` (this rank's
    running sums) follow along, so a stop between optimizer steps saves exactly where to resume. Returns the sums.

    With cfg.accum_steps N the optimizer steps every N batches (gradients of an N-times larger batch). After each
    batch, `after_batch(step, stats, loss)` may return True to end the epoch at the next optimizer step; at each
    optimizer step `checkpoint_due(next_step, stats, t0)` may write a mid-epoch checkpoint (t0: when this call began)."""
    cfg, t0 = ctx.cfg, time.perf_counter()
    stats = state.partial = state.partial or new_epoch_stats()
    n_images, bs, accum = len(reader.split), cfg.batch_size, cfg.accum_steps
    batches = reader.batches(bs, epoch_order(n_images, cfg.seed, state.epoch, ctx.sample_weights), start=state.step)
    pending = False  # gradients added up since the last optimizer step
    try:
        for step in range(state.step, steps):
            state.step = step
            first, last = step % accum == 0, (step + 1) % accum == 0 or step == steps - 1
            if first:  # between optimizer steps nothing is pending: the state here resumes exactly
                stop = ctx.dist.stop_reason(stops.names)  # distributed: a signal on any rank stops every rank here
                if stop:
                    stops.saving = True  # from here on the way out: further signals in a burst are noted, not raised
                    raise StopAtBoundary(stop)
                set_lr(ctx.optimizer, cfg.lr, lr_factor(step))  # the schedule is a pure function of the global step
                ctx.optimizer.zero_grad(set_to_none=True)
            xb, yb, _ = next(batches)
            loss = math.nan
            if len(yb):  # (empty when every file of a streamed batch failed to decode; recorded in bad_files; same on every rank)
                group = range(step - step % accum, min(step - step % accum + accum, steps))
                share = 1.0 if accum == 1 else _batch_images(step, bs, n_images) / sum(_batch_images(j, bs, n_images) for j in group)
                out, logits, y, n = train_step(ctx, xb, yb, batch_generator(cfg.seed, state.epoch, step), (state.epoch, step),
                                               share_of_step=share, update=last, zero_grad=False)
                loss = float(out)
                stats["loss_sum"] += loss * n if n else 0.0  # a rank's share may be empty
                stats["correct"] += correct_count(logits, y)
                stats["seen"] += n
                pending = not last
            elif last and pending:
                optimizer_step(ctx)  # the step's earlier batches
                pending = False
            stop_epoch = after_batch is not None and after_batch(step, stats, loss)
            if last and checkpoint_due is not None and step + 1 < steps:
                checkpoint_due(step + 1, stats, t0)
            if last and stop_epoch:
                break
    except StopAtBoundary:
        stats["seconds"] += time.perf_counter() - t0
        raise
    finally:  # now, not when the garbage collector gets to it: a streamed reader's worker processes end here
        batches.close()
    state.step = steps
    stats["seconds"] += time.perf_counter() - t0
    return stats


def _batch_images(step: int, batch_size: int, n: int) -> int:
    return max(0, min(batch_size, n - step * batch_size))


def score_split(model: nn.Module, split, norm: dict, device, precision: str, dist: ddp.Context, tta: bool = False) -> dict:
    """Metrics (+ "index") of a split; distributed in-memory splits are sharded over the ranks and gathered."""
    if dist.distributed and not is_streamed(split):
        ev = dist.evaluate(evaluate_arrays, model, split.x, split.y, norm, device, precision, tta=tta)
        return {**ev, "index": np.arange(len(split))}
    return evaluate_on_split(model, split, norm, device, precision, tta=tta)


# ---------------------------------------------------------------------------- the run


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
    callbacks: list[Callback] | None = None,
) -> TrainResult:
    """Train `model` on `dataset` as `cfg` says and write a run folder. Returns a TrainResult.

    'auto' recipe values in cfg are resolved first (cfg.resolved()); the run folder records the result.
    In a distributed run (`--nproc N`, torchrun: see engine/distributed.py) every rank calls fit; the ranks
    split each global batch of cfg.batch_size images, and only rank 0 writes the run folder.
    `callbacks` (engine/callbacks.py) run at fixed points and can stop training; `on_epoch_end(row)` is the short form.
    """
    fit_t0 = time.perf_counter()  # the time budget counts wall time from here (set-up, checkpoints and all)
    cfg = cfg.validate().resolved()
    multilabel.check_config(cfg, dataset, model)  # options that do not apply to multi-label data, before any file is written
    dist = ddp.setup(resolve_device(cfg.device))  # a no-op context in a single process
    device, main = dist.device, dist.is_main
    precision = resolve_precision(cfg.precision, device, model)

    # ---- the data, the augmentation and the model's input conventions
    augmenter = _augmenter_for(model, cfg, dataset.image_shape)  # also sets the model's test scale
    run = Path(resume_dir) if resume_dir is not None else dist.on_main(lambda: rd.prepare_run_dir(out, overwrite))
    progress = Progress(quiet or not main)
    if main:  # this process writes the folder until fit returns (a new run's folder is claimed already)
        took_over = rd.RunFolder(run).claim()
        if took_over:
            progress.print(took_over)
    try:  # until fit returns or raises, whatever raises it: the folder is released (set-up errors included)
        h, w, c = dataset.image_shape
        meta = model_metadata(model, dataset.class_names, (c, h, w), dataset=dataset.spec, resize=dataset.load_options.get("resize"))
        norm = meta["normalization"]
        reader = BatchReader(dataset.train)  # in memory: one uint8 tensor, indexed; streamed: worker processes decode batches ahead
        y_train = torch.from_numpy(dataset.train.y)
        n, k, steps = len(y_train), dataset.num_classes, math.ceil(len(y_train) / cfg.batch_size)

        # ---- model, optimizer, schedule. Pretrained: the first n_frozen epochs train the head on features computed once
        # (engine/finetune.py); the LR schedule covers the unfrozen epochs after them, where the earliest layers stay frozen
        n_frozen = (cfg.freeze_epochs or 0) if is_pretrained(model) else 0
        if n_frozen < cfg.epochs and is_pretrained(model) and cfg.freeze_early:  # before DDP: it syncs only trainable parameters
            finetune.freeze_early_layers(model)
        model.to(device).train()
        net = dist.wrap(model)  # DDP in a distributed run: its backward averages the gradients over ranks
        optimizer = build_optimizer(model, cfg)
        schedule = LrSchedule(cfg.schedule, max(1, cfg.epochs - n_frozen) * steps)
        ema = ModelEMA(model, cfg.ema_decay) if cfg.ema else None
        weights = loss_weights(cfg, y_train, dataset.class_names)
        ctx = StepContext(model, optimizer, cfg, norm, device, precision, k, augmenter, ema=ema, dist=dist, net=net, run=run,
                          weights=None if weights is None else weights.to(device),
                          sample_weights=balanced_sample_weights(y_train, k) if cfg.balance == "sampler" else None)

        # ---- a new run writes its config and samples; a resumed one picks up its weights, position and history
        run_info = run_outputs.run_info(cfg, dataset, device, precision, load_seconds, dist)
        state = TrainState(planned_epochs=cfg.epochs, run_info=run_info)
        if resume_state is not None:
            state = restore_state(resume_state, model, optimizer, schedule, ema, dist, cfg.epochs, ctx.scaler, source=run / "last.ckpt")
            run_info.update(state.run_info)
            run_info["resumed"] = run_info.get("resumed", 0) + 1
            state.run_info = run_info
            progress.print(f"resuming {run} at epoch {state.epoch}, batch {state.step}/{steps}")
        else:
            seed_everything(cfg.seed + dist.rank, cfg.deterministic)  # per-rank streams (dropout); rank 0 = single process
            if main:
                run_outputs.write_run_start(run, cfg, dataset)
        if main:
            rd.write_json(run / "run.json", run_info)
            for note in ([f"streaming {n:,} training images from disk, {reader.workers} decoding worker process(es)"] if reader.streamed else []) + dataset.notes:
                progress.print(note)

        n_test = len(dataset.splits["test"]) if "test" in dataset.splits else 0
        budget = TimeBudget(cfg.time_budget, cfg.epochs, dist, started=fit_t0, used_before=(load_seconds or 0.0) + spent_seconds,
                            spent_earlier=sum(r["seconds"] for r in state.history))  # a resumed run's earlier epochs count
        view = RunView(model, cfg, run, main, state.epoch, state.step, state.history)
        hooks = CallbackList(list(callbacks or []) + ([_EpochEndFunction(on_epoch_end)] if on_epoch_end is not None else []), view)
        stops = StopRequests()  # SIGINT/SIGTERM only raise a flag: the loop stops at the next batch boundary and saves
        loop = _Loop(ctx, cfg, dataset, reader, run, progress, schedule, state, budget, view, hooks, stops, n_frozen, steps, n_test,
                     2 * len(tta_scales(model)) if cfg.tta else 1, CheckpointEvery(cfg.checkpoint_every, dist), state.step, weights)

        stop_reason, finished = None, False
        with handling(stops):  # ... and stay handled until the final files are written, so a run never ends half-written
            try:
                hooks("on_train_start")
                if n_frozen and state.epoch <= n_frozen:  # pretrained: the head trains on the frozen backbone's features first
                    stop_reason = loop.frozen_phase()
                stop_reason = view.stop_reason or stop_reason
                while state.epoch <= state.planned_epochs and not stop_reason:  # the epochs: train, validate, re-plan, checkpoint
                    stop_reason = loop.epoch()
                finished = True
            except (Interrupted, KeyboardInterrupt, StopTraining, CnnlabError, RuntimeError) as e:
                instead = loop.leave(e, run_info)  # saves what can be resumed and marks run.json
                if instead is None:
                    raise
                raise instead from None
            finally:
                if not finished:  # leaving with an error or a stop
                    dist.close()

            # ---- finished: the test score, the model files, plots and run.json (a signal now is noted; the run completes)
            stops.saving = True
            try:
                model = ema.module if ema else model
                score = lambda m, split, tta=False: score_split(m, split, norm, device, precision, dist, tta=tta)  # noqa: E731
                test = run_outputs.finish(model, dataset, cfg, run, meta, state, stop_reason, load_seconds, score, dist, progress)
            finally:
                dist.close()
            hooks("on_train_end", test)
        if stops and main:  # on stderr even with --quiet: the signal was not obeyed, and whoever sent it should know why
            print(f"{stops.names[0]} arrived while the finished run was being written; the run completed first", file=sys.stderr)
        return TrainResult(run, model.eval(), meta, state.history, test)
    finally:
        rd.release(run)


@dataclass
class _Loop:
    """The steps of one fit call's loop over the objects fit set up: checkpoints, the record of each epoch, the
    pretrained model's frozen phase, one trained epoch, and leaving on a stop or an error."""

    ctx: StepContext
    cfg: TrainConfig
    dataset: Dataset
    reader: BatchReader
    run: Path
    progress: Progress
    schedule: LrSchedule
    state: TrainState
    budget: TimeBudget
    view: RunView
    hooks: CallbackList
    stops: StopRequests
    n_frozen: int
    steps: int
    n_test: int
    test_passes: int
    every: CheckpointEvery
    first_step: int  # the batch this process started training at (its first epoch's timing starts there)
    weights: torch.Tensor | None  # per-class loss weights, on the CPU

    @property
    def val(self):
        val = self.dataset.splits.get("val")
        return val if val is not None and len(val) else None

    def checkpoint(self) -> None:
        """Write last.ckpt: a collective (every rank calls it, rank 0 writes)."""
        ctx, dist = self.ctx, self.ctx.dist
        rng_states = dist.rng_states()
        if dist.is_main:
            save_checkpoint(self.run / "last.ckpt", capture_state(self.state, ctx.model, ctx.optimizer, self.schedule, ctx.ema, rng_states,
                                                                  dist.distributed, self.cfg.to_dict(), ctx.scaler))

    def end_epoch(self, row: dict, weights_of: nn.Module) -> None:
        """Record a finished epoch's row; keep the best weights in memory (in last.ckpt too; best.safetensors at the end)."""
        state = self.state
        state.history.append(row)
        self.progress.end_epoch(row, state.planned_epochs)
        # the best epoch: highest val accuracy; multi-label: highest val mAP (threshold-free; accuracy is mostly true negatives)
        if self.val is not None and row.get("val_map", row["val_accuracy"]) > state.best.get("map", state.best["accuracy"]):
            state.best = {"accuracy": row["val_accuracy"], "epoch": row["epoch"], **({"map": row["val_map"]} if "val_map" in row else {})}
            state.best_weights = {k: v.detach().clone() for k, v in weights_of.state_dict().items()}

    def write_metrics(self) -> None:
        if self.ctx.dist.is_main:
            rd.write_metrics_csv(self.run / "metrics.csv", self.state.history)
            if self.dataset.bad_files:  # streamed files that failed to decode join the list
                rd.write_bad_files(self.run / "bad_files.txt", self.dataset.bad_files)

    def after_batch(self, step: int, stats: dict, loss: float) -> bool:
        """Progress, the time budget's first plan, callbacks; True when a callback asked to stop."""
        state, budget = self.state, self.budget
        self.progress.step(stats["loss_sum"] / max(stats["seen"], 1), stats["correct"] / max(stats["seen"], 1))
        if budget.enabled and state.epoch == self.n_frozen + 1 and len(state.history) == self.n_frozen:  # the first trained epoch
            per_batch = budget.time_first_batches(step, self.first_step)
            if per_batch is not None:
                n_val = len(self.val) if self.val is not None else 0
                state.planned_epochs = budget.first_plan(per_batch, self.steps, len(self.reader.split), n_val, self.cfg.batch_size,
                                                         self.n_test, self.test_passes, done=self.n_frozen)
                self.schedule.total_steps = max(1, state.planned_epochs - self.n_frozen) * self.steps
        if self.hooks:
            self.view.step = step
            self.hooks("on_batch_end", loss)
        return self.view.stop_reason is not None

    def checkpoint_due(self, next_step: int, stats: dict, t0: float) -> None:
        """--checkpoint-every: a mid-epoch checkpoint, so a kill loses little."""
        if self.every.due():
            state = self.state
            live = state.step, state.partial
            so_far = {**stats, "seconds": stats["seconds"] + time.perf_counter() - t0}
            state.step, state.partial = next_step, self.ctx.dist.reduce_stats(so_far)
            self.checkpoint()
            state.step, state.partial = live

    def frozen_phase(self) -> str | None:
        """A pretrained model's head fitted on the frozen backbone's features; returns why training stops, if it does."""
        ctx, cfg, state, budget = self.ctx, self.cfg, self.state, self.budget
        model, y = ctx.model, torch.from_numpy(self.dataset.train.y)
        head_weights = class_weights(y, self.dataset.num_classes) if cfg.balance == "sampler" else self.weights  # (features: no sampling)
        rows = _frozen_phase(model, self.dataset, ctx.norm, ctx.device, ctx.precision, self.n_frozen, head_weights, self.stops, self.progress)
        ctx.dist.sync_parameters(model.get_submodule(model.head_name))  # every rank trained the same head; rank 0's is kept
        for row in rows:
            self.end_epoch(row, model)
        if ctx.dist.is_main:
            rd.write_metrics_csv(self.run / "metrics.csv", state.history)
        budget.restart_clock()
        state.epoch, state.step = self.n_frozen + 1, 0
        self.checkpoint()
        for row in rows if self.hooks else []:
            self.hooks("on_epoch_end", dict(row))
        if budget.enabled and state.planned_epochs > self.n_frozen and budget.left() <= 0:
            state.planned_epochs = self.n_frozen
            reason = f"time budget of {cfg.time_budget:g}s reached after the frozen phase"
            self.progress.print(reason)
            return reason
        return None

    def epoch(self) -> str | None:
        """Train, validate, re-plan and checkpoint one epoch; returns why training stops after it, if it does."""
        ctx, cfg, state, budget, steps, n_frozen = self.ctx, self.cfg, self.state, self.budget, self.steps, self.n_frozen
        epoch = self.view.epoch = state.epoch
        self.view.step = state.step
        self.hooks("on_epoch_start")
        self.progress.start_epoch(epoch, state.planned_epochs, steps, state.step)
        stats = train_one_epoch(ctx, self.reader, state, steps, lambda s: self.schedule.factor((epoch - 1 - n_frozen) * steps + s),
                                self.stops, self.after_batch, self.checkpoint_due if self.every.enabled else None)
        scored = ctx.ema.module if ctx.ema else ctx.model
        row = _epoch_row(epoch, ctx.dist.reduce_stats(stats), ctx.optimizer, scored, self.val, ctx.norm, ctx.device, ctx.precision,
                         ctx.dist, budget, self.n_test, self.test_passes)
        self.end_epoch(row, scored)
        self.write_metrics()
        self.schedule.epoch_end(row["val_loss"])
        reason = None
        if budget.enabled:
            state.planned_epochs = budget.after_epoch(epoch, state.planned_epochs)
            self.schedule.total_steps = max(1, state.planned_epochs - n_frozen) * steps
            if state.planned_epochs <= epoch < cfg.epochs:
                reason = f"time budget of {cfg.time_budget:g}s reached"
        # early stopping counts unfrozen epochs only: the frozen phase's best is where fine-tuning starts from
        if cfg.patience and self.val is not None and epoch - max(state.best["epoch"], n_frozen) >= cfg.patience:
            reason = (f"early stopping: no better val {'mAP' if 'map' in state.best else 'accuracy'} for {cfg.patience} epochs "
                      f"(best {state.best.get('map', state.best['accuracy']):.1%} at epoch {state.best['epoch']})")
        state.epoch, state.step, state.partial = epoch + 1, 0, None
        self.checkpoint()
        self.every.restart()
        self.hooks("on_epoch_end", dict(row))  # after the checkpoint: a StopTraining here leaves a resumable run
        reason = self.view.stop_reason or reason
        if reason:
            self.progress.print(reason)
        return reason

    def leave(self, e: BaseException, run_info: dict) -> BaseException | None:
        """On a stop or an error: save what resumes exactly, mark run.json, and return the exception to raise instead
        (None: re-raise `e`). Further signals while saving are noted, not obeyed."""
        dist, main = self.ctx.dist, self.ctx.dist.is_main
        lost = dist.lost_contact(e, self.run) if isinstance(e, (CnnlabError, RuntimeError)) else None  # another rank died or hung
        if isinstance(e, RuntimeError) and lost is None and not isinstance(e, CnnlabError):
            return None  # a bug: its own traceback
        self.stops.saving = True
        self.progress.stop()
        if isinstance(e, (Interrupted, KeyboardInterrupt)):
            if isinstance(e, StopAtBoundary):  # between batches: the state here resumes exactly
                self.state.partial = dist.reduce_stats(self.state.partial)
                self.checkpoint()
            run_outputs.write_status(run_info, "interrupted", self.run, main)
            return _interrupted(e, self.run, dist)
        run_outputs.write_status(run_info, "stopped" if isinstance(e, StopTraining) else "failed", self.run, main)
        return lost


class _EpochEndFunction(Callback):
    """fit(on_epoch_end=fn): fn(row) after each epoch (cnnlab tune prunes trials with it)."""

    def __init__(self, fn: Callable[[dict], None]):
        self.fn = fn

    def on_epoch_end(self, run: RunView, row: dict) -> None:
        self.fn(row)


def _augmenter_for(model: nn.Module, cfg: TrainConfig, image_shape: tuple[int, int, int]) -> Augmenter:
    """The run's augmentation; with --train-size it crops the loaded images (evaluation sees them whole). Sets
    cfg.test_scale when unset — FixRes: global-pool models evaluate enlarged to match the crops' magnification."""
    h, w, _ = image_shape
    train_size = training_size(cfg.train_size, (h, w))
    if train_size is not None and not hasattr(model, "test_scale"):
        raise ConfigError(f"--train-size {train_size} needs a global-pool model — {getattr(model, 'cnnlab_name', type(model).__name__)}'s "
                          f"fixed-size head takes {h}x{w} images only; leave --train-size out or choose another --model")
    augmenter = Augmenter(resolve_ops(cfg.augment, cfg.aug_args), train_size)
    if cfg.test_scale is None:
        auto_scale = hasattr(model, "test_scale") and train_size is None  # with --train-size the image size is the eval size
        cfg.test_scale = matched_test_scale(augmenter.ops, min(h, w)) if auto_scale else 1.0
    set_test_scale(model, cfg.test_scale)
    return augmenter


def _epoch_row(epoch: int, stats: dict, optimizer, model: nn.Module, val, norm: dict, device, precision: str, dist: ddp.Context,
               budget: TimeBudget, n_test: int, test_passes: int) -> dict:
    """The epoch's metrics row from its summed training stats, with the val split's loss and accuracy. Validation
    also times inference, which sets the time budget's reserve for the final test score."""
    t_val = time.perf_counter()
    row = {"epoch": epoch, "train_loss": stats["loss_sum"] / stats["seen"], "train_accuracy": stats["correct"] / stats["seen"],
           "val_loss": None, "val_accuracy": None, "lr": optimizer.param_groups[0]["lr"], "seconds": stats["seconds"]}
    if val is not None and len(val):
        ev = score_split(model, val, norm, device, precision, dist)
        row.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"], **({"val_map": ev["map"]} if "map" in ev else {}))
        budget.reserve_for_test((time.perf_counter() - t_val) / len(val), n_test, test_passes)
    row["seconds"] = dist.broadcast_number(stats["seconds"] + (time.perf_counter() - t_val))  # time-budget plans agree
    return row


def _interrupted(e: BaseException, run: Path, dist: ddp.Context) -> TrainingInterrupted:
    why = e.args[0] if isinstance(e, (Interrupted, Signalled)) and e.args else "SIGINT"
    if dist.is_main and not (run / "last.ckpt").exists():  # e.g. during a pretrained model's feature extraction
        folder = rd.RunFolder(run)
        again = (f"start the run again with: {folder.restart_command()}" if folder.config_yaml.is_file()
                 else "start the run again (add --overwrite to reuse the run folder)")
        return TrainingInterrupted(f"training interrupted ({why}) before the first checkpoint — nothing to resume; {again}", why)
    return TrainingInterrupted(f"training interrupted ({why}); state saved in {run / 'last.ckpt'} — resume with: {dist.resume_command(run)}",
                               why)


def _frozen_phase(model: nn.Module, dataset: Dataset, norm: dict, device, precision: str, n_frozen: int,
                  weights: torch.Tensor | None, stops: StopRequests, progress: Progress) -> list[dict]:
    """Train the new head of a pretrained model for n_frozen epochs on the frozen backbone's features, computed
    once per image; the backbone's weights and BatchNorm statistics
    stay exactly as loaded. Returns the epochs' metrics rows; the first row's seconds include the extraction."""

    t0 = time.perf_counter()
    train, val = dataset.train, dataset.splits.get("val")
    f, y = finetune.pooled_features(model, train, norm, device, precision, should_stop=stops.check)
    val_fy = finetune.pooled_features(model, val, norm, device, precision, should_stop=stops.check) if val is not None and len(val) else None
    extract_s = time.perf_counter() - t0
    progress.print(f"frozen backbone: features of {len(y):,} training images computed once in {extract_s:.1f}s; "
                   f"the head is fitted on them (logistic regression, {n_frozen} epoch(s) of L-BFGS)")
    rows = finetune.train_head(model, f, y, n_frozen, weights=None if weights is None else weights.cpu(), val=val_fy)
    for i, row in enumerate(rows):
        row["epoch"] = i + 1
        row["phase"] = "frozen"
    rows[0]["seconds"] += extract_s
    return rows


