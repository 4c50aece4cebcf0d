"""Data-parallel training across processes (DistributedDataParallel): what one rank does.

A process is a rank of a distributed run when its launcher put WORLD_SIZE > 1 in the environment:
`cnnlab train --nproc N` (cnnlab.engine.launcher, one machine) or torchrun (one or many machines).
Every rank loads the same data and walks the same global data order (`epoch_order(n, seed, epoch)`);
each global batch of --batch-size images is split into W contiguous shares, rank r trains on share r,
and DDP averages the gradients, so every rank holds the same weights after every step. The loss is
scaled by the share's size, so the averaged gradient is exactly the gradient of the global batch's
mean loss even when the last batch does not split evenly.

Everything that decides control flow is agreed on through a collective, so no rank is ever left
waiting on another: a stop signal on any rank (`stop_reason`, before every batch), a non-finite loss on any
rank (`all_finite`), the time-budget plan
(`broadcast_number` from rank 0), the run folder (`on_main`). Only rank 0 writes files. Validation and
test splits are evaluated in shards and the logits gathered, so every rank computes the metrics from
the full logits exactly as a single process does.

Outside a distributed run `setup` returns a `Context` whose methods are plain single-process code.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from cnnlab import errors
from cnnlab.engine.inference import metrics_from_logits
from cnnlab.errors import CnnlabError, ConfigError, DistributedError

TIMEOUT_ENV = "CNNLAB_DIST_TIMEOUT_S"  # seconds one rank waits for the others in any collective
DEFAULT_TIMEOUT_S = 300.0
LAUNCHER_ENV = "CNNLAB_LAUNCHER"  # set by `cnnlab train --nproc` (its pid): the rank stops if the launcher dies
_LAUNCHER_GONE = 255  # stop code (signal numbers are below 65)
_joined_group = False  # this process created a process group (it is a rank of `--nproc` or torchrun)


def env_world_size() -> int:
    return _env_int("WORLD_SIZE", 1)


def env_rank() -> int:
    return _env_int("RANK", 0)


def is_main_process() -> bool:
    """True on rank 0 of a distributed run, and in every ordinary single process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_rank() == 0


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r} is invalid — expected seconds > 0, e.g. 300")
    return value


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not a whole number — the launcher sets it; unset it to train in one process") from None


@dataclass
class Context:
    """One rank's view of the run. world_size 1: a single process, every method is local."""

    device: torch.device
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    owns_group: bool = False
    launcher_pid: int | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def _comm_device(self) -> torch.device:
        """NCCL moves CUDA tensors only; gloo CPU tensors."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # ---------------------------------------------------------------- training step

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call for training forwards: DDP (which averages gradients in backward) or the model."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of one global batch (shares differ in size by at most one; may be empty)."""
        if not self.distributed:
            return idx
        return torch.tensor_split(idx, self.world_size)[self.rank]

    def scale_loss(self, loss: torch.Tensor, logits: torch.Tensor, n_local: int, n_global: int) -> torch.Tensor:
        """The loss to backpropagate: DDP averages gradients over W ranks, so share i's mean loss is weighted
        by W * n_i / n_global; the sum over ranks is then the global batch's mean loss. An empty share
        contributes zero gradients (its forward still runs: DDP needs every rank in every backward)."""
        if not self.distributed:
            return loss
        if n_local == 0:
            return logits.float().sum() * 0.0
        return loss * (self.world_size * n_local / n_global)

    def rank_generator(self, g: torch.Generator) -> torch.Generator:
        """Rank 0 augments with the batch's own generator; other ranks with a reseeded one (distinct draws)."""
        if self.rank:
            g.manual_seed(g.initial_seed() + self.rank * 1_000_000_007)
        return g

    def stop_reason(self, stop_requested: list[str]) -> str | None:
        """Why to stop before this batch (a signal's name), or None — the same answer on every rank.

        Called before every batch: one all-reduce of the highest signal number any rank received, so a signal
        to any one rank (or to all, at slightly different moments) stops every rank before the same batch."""
        if not self.distributed:
            return stop_requested[0] if stop_requested else None
        code = signal.Signals[stop_requested[0]].value if stop_requested else 0
        if not code and self.launcher_pid is not None and os.getppid() != self.launcher_pid:
            code = _LAUNCHER_GONE  # the launcher was killed: stop and save rather than train on unattended
        flag = torch.tensor([code], dtype=torch.int32, device=self._comm_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        code = int(flag.item())
        if code == _LAUNCHER_GONE:
            return "the launcher exited"
        return signal.Signals(code).name if code else None

    def all_finite(self, loss: torch.Tensor, n_local: int) -> bool:
        """False on every rank if the loss is NaN/inf on any rank (an empty share counts as finite)."""
        finite = n_local == 0 or bool(torch.isfinite(loss.detach()))
        if not self.distributed:
            return finite
        flag = torch.tensor([0 if finite else 1], dtype=torch.int32, device=self._comm_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return not flag.item()

    # ---------------------------------------------------------------- agreement on values

    def reduce_stats(self, stats: dict) -> dict:
        """Epoch statistics summed over ranks (loss_sum, correct, seen); seconds stay this rank's."""
        if not self.distributed:
            return stats
        t = torch.tensor([stats["loss_sum"], stats["correct"], stats["seen"]], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        loss_sum, correct, seen = t.tolist()
        return {**stats, "loss_sum": loss_sum, "correct": int(round(correct)), "seen": int(round(seen))}

    def broadcast_number(self, value: float) -> float:
        """Rank 0's value on every rank (timings, so decisions made from them agree)."""
        if not self.distributed:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device)
        dist.broadcast(t, src=0)
        return float(t.item())

    def broadcast_text(self, text: str) -> str:
        """Rank 0's string on every rank (tensors only: nothing is pickled)."""
        if not self.distributed:
            return text
        data = text.encode("utf-8") if self.is_main else b""
        n = torch.tensor([len(data)], dtype=torch.int64, device=self._comm_device)
        dist.broadcast(n, src=0)
        buf = torch.zeros(int(n.item()), dtype=torch.uint8)
        if self.is_main:
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buf = buf.to(self._comm_device)
        dist.broadcast(buf, src=0)
        return bytes(buf.cpu().tolist()).decode("utf-8")

    def on_main(self, fn: Callable[[], Path]) -> Path:
        """Run fn on rank 0 only (e.g. create the run folder) and give its path to every rank.

        A CnnlabError on rank 0 is raised on every rank with the same message and exit code."""
        if not self.distributed:
            return fn()
        failure: BaseException | None = None
        payload: dict[str, Any] = {}
        if self.is_main:
            try:
                payload = {"path": str(fn())}
            except CnnlabError as e:
                failure, payload = e, {"error": type(e).__name__, "message": str(e)}
            except Exception as e:  # a bug on rank 0: the others stop too instead of waiting
                failure, payload = e, {"error": "DistributedError", "message": f"rank 0 failed: {e.__class__.__name__}: {e}"}
        payload = json.loads(self.broadcast_text(json.dumps(payload)))
        if failure is not None:
            raise failure
        if "error" in payload:
            cls = getattr(errors, payload["error"], None)
            if not (isinstance(cls, type) and issubclass(cls, CnnlabError)):
                cls = CnnlabError
            raise cls(payload["message"])
        return Path(payload["path"])

    def rng_states(self) -> list[torch.Tensor]:
        """Every rank's torch RNG state, gathered (what a resume with the same world size restores per rank)."""
        state = torch.get_rng_state()
        if not self.distributed:
            return [state]
        out = [torch.empty_like(state, device=self._comm_device) for _ in range(self.world_size)]
        dist.all_gather(out, state.to(self._comm_device))
        return [s.cpu() for s in out]

    # ---------------------------------------------------------------- evaluation

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) everywhere: each rank's last forward updated its own."""
        if not self.distributed:
            return
        for b in model.buffers():
            dist.broadcast(b.data, src=0)

    def sync_parameters(self, module: nn.Module) -> None:
        """Rank 0's parameters everywhere (the head each rank trained alike on cached features: exactly alike then)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for p in module.parameters():
                dist.broadcast(p.data, src=0)

    def evaluate(self, evaluate_arrays: Callable[..., dict], model: nn.Module, x: np.ndarray, y: np.ndarray, norm: dict,
                 device: torch.device, precision: str, tta: bool = False) -> dict:
        """`evaluate_arrays` (engine.inference's) over a whole split, sharded over the ranks: each rank scores
        its contiguous share, the logits are gathered, and every rank computes the metrics from all of them."""
        n = len(x)
        if not self.distributed or n < self.world_size:
            return evaluate_arrays(model, x, y, norm, device, precision, tta=tta)
        self.sync_buffers(model)
        sizes = [len(c) for c in np.array_split(np.arange(n), self.world_size)]
        lo, hi = sum(sizes[: self.rank]), sum(sizes[: self.rank + 1])
        local = evaluate_arrays(model, x[lo:hi], y[lo:hi], norm, device, precision, tta=tta)["logits"]
        padded = torch.zeros(sizes[0], local.shape[1], dtype=local.dtype)
        padded[: len(local)] = local
        parts = [torch.empty_like(padded, device=self._comm_device) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.to(self._comm_device))
        logits = torch.cat([p[:s].cpu() for p, s in zip(parts, sizes)])
        return metrics_from_logits(logits, y)

    # ---------------------------------------------------------------- messages and teardown

    def describe(self) -> dict | None:
        """What run.json records about the process layout (None for a single process)."""
        if not self.distributed:
            return None
        return {"world_size": self.world_size, "nproc_per_node": self.local_world_size, "backend": self.backend,
                "global_batch": "batch_size is the global batch, split over the ranks"}

    def resume_command(self, run: Path) -> str:
        if not self.distributed:
            return f"cnnlab train --resume {run}"
        if self.launcher_pid is not None:
            return f"cnnlab train --resume {run} --nproc {self.world_size}"
        return f"torchrun ... -m cnnlab train --resume {run} (same torchrun options)"

    def lost_contact(self, e: BaseException, run: Path) -> DistributedError | None:
        """A one-line error if `e` is a collective failing because another rank died or hung, else None."""
        if not self.distributed or not is_peer_failure(e):
            return None
        detail = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        detail = detail.split("] ", 1)[-1].split(". ")[0][:160]  # gloo's first sentence, without its source-file prefix
        resume = f"; resume from {run / 'last.ckpt'} with: {self.resume_command(run)}" if (run / "last.ckpt").exists() else ""
        return DistributedError(f"rank {self.rank} lost contact with the other ranks ({detail}) — another rank failed, "
                                f"was killed or hung (see its error){resume}")

    def close(self) -> None:
        """Destroy the process group if this context created it (a caller's own group is left alone)."""
        if self.owns_group and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # tearing down after a failed peer may fail too; the process is ending anyway
                pass
        self.owns_group = False


def is_peer_failure(e: BaseException) -> bool:
    """Collectives report a dead or hung peer as DistError / RuntimeError with these phrases."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out", "timed out", "NCCL error"))


def setup(device: torch.device) -> Context:
    """The rank's context: joins the process group when the environment says this is a distributed run.

    CPU ranks use gloo, CUDA ranks NCCL on GPU LOCAL_RANK. Each rank uses cores // ranks-per-machine threads.
    A caller that already initialised a process group (its own torchrun script) keeps it; fit does not close it."""
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        if world > 1 and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        return Context(device, world, rank, _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", 1), dist.get_backend())
    world = env_world_size()
    if world <= 1:
        return Context(device)
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={world} but this PyTorch build has no torch.distributed — unset WORLD_SIZE or install a full PyTorch")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set — start ranks with `cnnlab train --nproc N` or torchrun")
    rank, local_rank = env_rank(), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise ConfigError(f"{local_world} processes per machine but only {gpus} CUDA GPU(s) here — "
                              f"use --nproc {gpus} (or --nproc-per-node {gpus} with torchrun), or --device cpu")
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        backend = "gloo"
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    wait = timeout_s()
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=wait), world_size=world, rank=rank)
    except (RuntimeError, ValueError) as e:
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise DistributedError(f"rank {rank} could not join the other {world - 1} rank(s) at {where} within {wait:g}s "
                               f"({str(e).strip().splitlines()[0][:120]}) — check that every machine was started with the "
                               "same --nnodes/--rdzv-endpoint (or MASTER_ADDR/MASTER_PORT) and can reach it") from None
    global _joined_group
    _joined_group = True
    launcher = os.environ.get(LAUNCHER_ENV)
    return Context(device, world, rank, local_rank, local_world, backend, owns_group=True,
                   launcher_pid=int(launcher) if launcher and launcher.isdigit() else None)


def exit_rank_process(code: int) -> None:
    """End a command-line rank process now, skipping the interpreter's finalisation, if it joined a group.

    Gloo's worker threads outlive destroy_process_group (DDP's reducer still holds the group); when the
    interpreter then tears down, a still-joinable C++ thread can call std::terminate, and the rank dies of
    SIGABRT after its run completed (measured: 2 of 12 two-rank runs here). Every file is written and closed
    by then, so the process flushes its output and leaves with os._exit. A no-op in any other process."""
    if not _joined_group:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
