"""`cnnlab train --nproc N`: run N ranks of the same command on this machine and watch over them.

What `torchrun --standalone --nproc-per-node N -m cnnlab train ...` does, with cnnlab's conventions:
- the launcher hosts the rendezvous store (a TCPStore on a port the OS picks, so two runs never race for a
  port) and starts N `python -m cnnlab <same arguments>` processes with WORLD_SIZE, RANK, LOCAL_RANK,
  MASTER_ADDR/MASTER_PORT set (as torchrun does, TORCHELASTIC_USE_AGENT_STORE tells env:// that the store
  is ours) and OMP_NUM_THREADS = cores // N;
- every rank runs in its own session, so a terminal's Ctrl-C reaches only the launcher, which forwards each
  SIGINT/SIGTERM it gets to every rank exactly once: the ranks agree on the batch to stop at, rank 0 saves
  last.ckpt. A second signal makes the ranks leave at once; a third kills them;
- when a rank fails, the others notice at their next collective and exit; any rank still running after
  GRACE_S is sent SIGTERM, then SIGKILL: a failed rank never leaves the launcher waiting;
- the exit code is that of the first rank to fail (2 bad input, 1 training error or interruption; 1 when a
  rank was killed by a signal), 0 when all succeed;
- rank 0's output passes through as it comes; the other ranks' stderr is printed at the end, prefixed
  `[rank R]`, without the lines rank 0 printed too (all ranks meet the same bad input: one error line, not N).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from cnnlab.engine.distributed import LAUNCHER_ENV, timeout_s
from cnnlab.engine.signals import handling

GRACE_S = 30.0  # after the first failure: time for the other ranks to notice it and exit on their own
KILL_AFTER_S = 10.0  # after SIGTERM: time before SIGKILL
POLL_S = 0.05


def launch(nproc: int, argv: list[str], command: list[str] | None = None) -> int:
    """Run `python -m cnnlab *argv` (or `command + argv`) as nproc ranks; returns the launcher's exit code."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s()))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0", "TORCHELASTIC_USE_AGENT_STORE": "True",
           LAUNCHER_ENV: str(os.getpid())}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    procs: list[subprocess.Popen] = []
    main_lines: set[str] = set()
    other_lines: dict[int, list[str]] = {}
    pumps: list[threading.Thread] = []
    signals_seen: list[int] = []

    def forward(signum, frame):
        signals_seen.append(signum)
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGKILL if len(signals_seen) >= 3 else signum)
                except ProcessLookupError:
                    pass

    with handling(forward), _ranks_cleaned_up(procs, pumps):
        for rank in range(nproc):
            p = subprocess.Popen([*(command or [sys.executable, "-m", "cnnlab"]), *argv], env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                 stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
            procs.append(p)
            t = threading.Thread(target=_pump, args=(rank, p.stderr, main_lines, other_lines.setdefault(rank, [])), daemon=True)
            t.start()
            pumps.append(t)
        first_failure = _watch(procs, signals_seen)
    del store
    for rank in range(1, nproc):
        for line in other_lines.get(rank, []):
            if line.strip() and line.strip() not in main_lines:
                sys.stderr.write(f"[rank {rank}] {line}")
    sys.stderr.flush()
    if first_failure is None:
        return 0
    rank, code = first_failure
    if code > 0:
        return code
    name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
    print(f"error: rank {rank} was killed by {name}", file=sys.stderr)
    return 1


@contextmanager
def _ranks_cleaned_up(procs: list[subprocess.Popen], pumps: list[threading.Thread]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:  # only reached with live ranks if the launcher itself failed
            if p.poll() is None:
                p.kill()
        for t in pumps:
            t.join(timeout=5)


def _pump(rank: int, stream, main_lines: set[str], lines: list[str]) -> None:
    for line in iter(stream.readline, ""):
        if rank == 0:
            sys.stderr.write(line)
            sys.stderr.flush()
            main_lines.add(line.strip())
        else:
            lines.append(line)
    stream.close()


def _watch(procs: list[subprocess.Popen], signals_seen: list[int]) -> tuple[int, int] | None:
    """Wait for every rank; returns (rank, exit code) of the first to fail, or None."""
    first_failure = None
    terminate_at = kill_at = None
    while True:
        codes = [p.poll() for p in procs]
        if first_failure is None:
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                first_failure = failed[0]
                if not signals_seen:  # an interrupted run stops by itself (rank 0 may still be saving last.ckpt)
                    terminate_at = time.monotonic() + GRACE_S
        if all(c is not None for c in codes):
            return first_failure
        now = time.monotonic()
        if terminate_at is not None and now >= terminate_at:
            terminate_at, kill_at = None, now + KILL_AFTER_S
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        if kill_at is not None and now >= kill_at:
            kill_at = None
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(POLL_S)


# ------------------------------------------------------------------ `cnnlab train --nproc N`: deciding and preparing the launch


def starts_ranks(nproc: int) -> bool:
    """Whether this process starts the ranks itself: `--nproc N` with N > 1, in the user's process.

    False in a single process and inside a rank (the ranks run the same command line, --nproc included).
    Under torchrun, --nproc is an error: torchrun starts the processes."""
    from cnnlab.engine.distributed import env_world_size
    from cnnlab.errors import ConfigError

    if os.environ.get(LAUNCHER_ENV):
        return False  # this process is one of the ranks
    if env_world_size() > 1:
        if nproc > 1:
            raise ConfigError("--nproc starts its own processes — under torchrun leave it out (--nproc-per-node sets the count)")
        return False
    return nproc > 1


def check_torchrun_config(cfg) -> None:
    """Under torchrun every rank plans on its own, so the default recipe (model auto) could differ between ranks."""
    from cnnlab.engine.distributed import env_world_size
    from cnnlab.errors import ConfigError

    if cfg.model == "auto" and env_world_size() > 1:
        raise ConfigError("the default recipe measures this machine's speed to choose the image size, and ranks could"
                          " choose differently — under torchrun pass --model and --image-size (a single-process run prints its choice)")


def launch_training(cfg, nproc: int, argv: list[str], auto_plan, log=print) -> int:
    """Train a checked TrainConfig `cfg` as nproc ranks of `python -m cnnlab *argv`; returns the exit code.

    The GPUs are checked first. With model auto, the default recipe chooses once, here — `auto_plan(cfg)` returns
    its engine.auto.Plan (cnnlab.api.auto_plan: it may read the data) — and every rank gets that explicit choice
    on its command line. log(note) tells the choice (None: silent)."""
    check_gpus_for(nproc, cfg.device)
    if cfg.model == "auto":
        plan = auto_plan(cfg)
        if log is not None:
            log(plan.note)
        argv = [*argv, *recipe_flags(plan.cfg)]
    return launch(nproc, argv)


def recipe_flags(cfg) -> list[str]:
    """The command-line flags that fix the default recipe's choices in `cfg` (a planned config) for every rank."""
    flags = ["--model", cfg.model, "--aug", cfg.augment, "--batch-size", str(cfg.batch_size)]
    if cfg.image_size is not None:
        flags += ["--image-size", str(cfg.image_size)]
    if cfg.train_size is not None:
        flags += ["--train-size", str(cfg.train_size)]
    if cfg.pretrained:
        flags += ["--pretrained"] + (["--freeze"] if cfg.freeze else [])
        flags += ["--tta" if cfg.tta else "--no-tta"] if cfg.tta is not None else []
    return flags


def check_gpus_for(nproc: int, device: str) -> None:
    """On CUDA, one GPU per rank."""
    import torch

    from cnnlab.engine.device import resolve_device
    from cnnlab.errors import ConfigError

    if resolve_device(device).type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc} but this machine has {torch.cuda.device_count()} CUDA GPU(s) — "
                          f"use --nproc {torch.cuda.device_count()} or --device cpu")
