"""Kill-and-resume harness: SIGKILL training at random points, resume, compare with an uninterrupted run.

    python tools/kill_resume.py --kills 20 [--seed 0] [--work DIR] [--json]

One uninterrupted reference run, then trials until --kills SIGKILLs have landed. Each trial starts a
fresh run and SIGKILLs it at one of three kinds of point: 'write' — the instant the k-th checkpoint temp
file appears (k random in 1..epochs), i.e. mid-checkpoint-write; 'late' — a random point inside epoch k+1 (k random in 1..epochs-1, measured by this run's own first-epoch
duration); 'early' — a random time before the first checkpoint. It then resumes with
`cnnlab train --resume` (on every fourth trial the resumed process is SIGKILLed once more) until the run
completes. On CPU with --deterministic the final weights and metrics.csv (minus the wall-time `seconds`
column) must be bit-identical with the reference, every last.ckpt seen after a kill must load, and no
temp file may be left. A kill before the first checkpoint leaves nothing to resume: the harness checks
that --resume says so cleanly (exit 2) and restarts the run with --overwrite. One JSON line per trial
and a summary (or one JSON object with --json); exit 0 only when every trial held.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = "builtin:shapes?n=240&size=24&classes=3"
EPOCHS = 3
TRAIN = ["--model", "seed_cnn", "--epochs", str(EPOCHS), "--batch-size", "16", "--seed", "7", "--deterministic", "--device", "cpu", "--quiet"]


def cnnlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnlab", *map(str, args)]


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


def same_result(run: Path, ref: Path) -> tuple[bool, bool]:
    import torch

    w, wr = weights(run), weights(ref)
    same_w = w.keys() == wr.keys() and all(torch.equal(w[k], wr[k]) for k in w)
    return same_w, metrics(run) == metrics(ref)


def checkpoint_loads(run: Path) -> bool | None:
    if not (run / "last.ckpt").exists():
        return None
    from cnnlab.engine.checkpoint import load_checkpoint
    from cnnlab.errors import CnnlabError

    try:
        load_checkpoint(run)
        return True
    except CnnlabError:
        return False


def run_and_kill(cmd: list[str], run: Path, mode: str, arg: float, env: dict) -> str:
    """Start `cmd` and SIGKILL it; returns where it died ('finished' if it ended first).

    mode 'time': `arg` seconds after start. 'after-ckpt': arg = k + f (k whole, 0 <= f < 1): once the k-th
    checkpoint is written, wait f times the first epoch's duration in this same process (so the point
    falls inside epoch k+1 however loaded the machine is). 'write': the instant the `arg`-th distinct
    checkpoint temp file (.last.ckpt.XXXX.tmp) is seen."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    t0 = time.monotonic()
    t_folder = t_first = due = None
    ckpts, last_mtime = 0, None
    writes: set[str] = set()
    while p.poll() is None:
        now = time.monotonic() - t0
        if mode == "write":
            try:
                writes.update(n for n in os.listdir(run) if n.startswith(".last.ckpt."))
            except FileNotFoundError:
                pass
            if len(writes) >= arg:
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0002)
            continue
        if mode == "after-ckpt" and due is None:
            if t_folder is None and (run / "config.yaml").exists():
                t_folder = now
            try:
                m = os.stat(run / "last.ckpt").st_mtime_ns
            except FileNotFoundError:
                m = None
            if m is not None and m != last_mtime:
                last_mtime, ckpts = m, ckpts + 1
                t_first = now if t_first is None else t_first
                if ckpts == int(arg):
                    due = now + (arg - int(arg)) * (t_first - (t_folder if t_folder is not None else 0.0))
        if mode == "time":
            due = arg
        if due is not None and now >= due:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    p.wait()
    if p.returncode == 0:
        return "finished"
    if p.returncode != -signal.SIGKILL:
        raise RuntimeError(f"{' '.join(cmd)} failed with {p.returncode}: {p.stderr.read().decode()[-500:]}")
    if not run.exists():
        return "before-run-folder"
    if any(n.startswith(".last.ckpt.") for n in os.listdir(run)):
        return "mid-checkpoint-write"
    other_tmp = sorted(n for n in os.listdir(run) if n.endswith(".tmp"))
    if other_tmp:  # mid-write of another file: .NAME.XXXX.tmp
        return "mid-write-of-" + other_tmp[0][1:].rsplit(".", 2)[0]
    if '"completed"' in ((run / "run.json").read_text() if (run / "run.json").exists() else ""):
        return "after-completion"  # all files written, the process was still exiting
    if (run / "model.safetensors").exists():
        return "finishing"  # model written, plots / run.json not yet
    if mode == "write":
        return "just-after-checkpoint-write"
    return "before-first-checkpoint" if not (run / "last.ckpt").exists() else "mid-epoch"


def reference(work: Path, env: dict) -> dict:
    """The uninterrupted run, timed: total seconds and when the first last.ckpt appeared."""
    ref = work / "reference"
    t0 = time.monotonic()
    p = subprocess.Popen(cnnlab("train", "--data", DATA, *TRAIN, "--out", ref, "--overwrite"), stdout=subprocess.DEVNULL, env=env)
    first = None
    while p.poll() is None:
        if first is None and (ref / "last.ckpt").exists():
            first = time.monotonic() - t0
        time.sleep(0.01)
    if p.returncode != 0:
        raise RuntimeError("the reference run failed")
    total = time.monotonic() - t0
    return {"run": ref, "total_s": total, "first_ckpt_s": first or total / 2}


def trial(i: int, ref: dict, work: Path, rng: random.Random, env: dict, mode: str | None = None, arg: float | None = None) -> dict:
    """One kill point. mode: 'write' (the instant a checkpoint temp file appears), 'late' (a random
    time after the reference's first checkpoint), 'early' (a random time before it); default by i.
    `arg` overrides the random choice (see run_and_kill)."""
    run = work / f"kill{i:03d}"
    mode = mode or ("write", "late", "late", "early", "late")[i % 5]
    first, total, given = ref["first_ckpt_s"], ref["total_s"], arg
    how, arg = {"write": ("write", rng.randint(1, EPOCHS)),
                "late": ("after-ckpt", rng.randint(1, EPOCHS - 1) + rng.uniform(0.0, 0.9)),
                "early": ("time", rng.uniform(0.2 * first, 0.95 * first))}[mode]
    arg = arg if given is None else given
    where = run_and_kill(cnnlab("train", "--data", DATA, *TRAIN, "--out", run), run, how, arg, env)
    rec = {"trial": i, "mode": mode, "kill_at": f"{how} {arg:.3f}", "killed": where, "kills": int(where != "finished"),
           "tmp_left_by_kill": sorted(n for n in os.listdir(run) if n.endswith(".tmp")) if run.exists() else [],
           "checkpoints_loadable": True, "restarted": False}
    resumes = 0
    while True:
        ok = checkpoint_loads(run)
        if ok is False:
            rec["checkpoints_loadable"] = False
        if (run / "model.safetensors").exists() and json.loads((run / "run.json").read_text()).get("status") == "completed":
            break
        if ok is None:  # nothing to resume from: --resume must say so, then start over
            p = subprocess.run(cnnlab("train", "--resume", run), capture_output=True, text=True, env=env)
            assert p.returncode == 2 and "no checkpoint" in p.stderr and "Traceback" not in p.stderr, p.stderr
            subprocess.run(cnnlab("train", "--data", DATA, *TRAIN, "--out", run, "--overwrite"), check=True, env=env,
                           stdout=subprocess.DEVNULL)
            rec["restarted"] = True
            continue
        resumes += 1
        if resumes == 1 and i % 4 == 3:  # kill the resumed process too, once
            w = run_and_kill(cnnlab("train", "--resume", run), run, "time", rng.uniform(0.3, 0.9) * total, env)  # from process start
            rec["kills"] += int(w != "finished")
            rec["killed_again"] = w
            continue
        subprocess.run(cnnlab("train", "--resume", run), check=True, env=env, stdout=subprocess.DEVNULL)
    rec["resumes"] = resumes
    rec["stale_temp_files"] = sorted(n for n in os.listdir(run) if n.endswith(".tmp"))
    rec["weights_identical"], rec["metrics_identical"] = same_result(run, ref["run"])
    rec["held"] = rec["weights_identical"] and rec["metrics_identical"] and rec["checkpoints_loadable"] and not rec["stale_temp_files"]
    shutil.rmtree(run)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver (trials run until this many landed)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temp folder, removed afterwards)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="cnnlab-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = reference(work, env)
    rng = random.Random(args.seed)
    records = []
    i = 0
    while sum(r["kills"] for r in records) < args.kills and i < 3 * args.kills:  # a run may finish before its kill
        rec = trial(i, ref, work, rng, env)
        records.append(rec)
        i += 1
        if not args.json:
            print(json.dumps(rec), flush=True)
    held = [r for r in records if r["held"]]
    summary = {"trials": len(records), "kills": sum(r["kills"] for r in records), "held": len(held),
               "by_point": {k: sum(r["killed"] == k for r in records) for k in sorted({r["killed"] for r in records})},
               "restarted_without_checkpoint": sum(r["restarted"] for r in records),
               "killed_twice": sum(r["kills"] > 1 for r in records),
               "reference_run_s": round(ref["total_s"], 1), "data": DATA, "train": " ".join(TRAIN)}
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"summary": summary, "trials": records} if args.json else summary))
    return 0 if len(held) == len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
