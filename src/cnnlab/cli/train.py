"""`cnnlab train`: its flags are generated from TrainConfig's fields (cnnlab/config.py), where each is declared."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.cli._common import add_data_options, add_field_options, cli_fields, parse_nproc
from cnnlab.config import DataOptions, TrainConfig
from cnnlab.errors import ConfigError

DATA_KEYS = cli_fields(DataOptions)
TRAIN_KEYS = [name for name in cli_fields(TrainConfig) if name not in DATA_KEYS]
CONFIG_KEYS = DATA_KEYS + TRAIN_KEYS  # the flags that set a TrainConfig field; the others say where and how to run


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model and write a run folder")
    # unset flags stay unset (SUPPRESS), so --config values are not overwritten by defaults
    add_data_options(p, unset=argparse.SUPPRESS)
    model_keys = TRAIN_KEYS[: TRAIN_KEYS.index("freeze_early") + 1]
    add_field_options(p, TrainConfig, model_keys)
    p.add_argument("--model-file", metavar="LAYERS.yaml", help="a custom network as a YAML/JSON layer list (see docs/recipes.md)")
    add_field_options(p, TrainConfig, TRAIN_KEYS[len(model_keys):])
    p.add_argument("--config", metavar="FILE.yaml", help="start from a config file (e.g. RUN/config.yaml); flags override it")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/train, runs/train2, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last.ckpt")
    p.add_argument("--nproc", type=parse_nproc, default=1, metavar="N",
                   help="train with N processes on this machine (DistributedDataParallel; --batch-size stays the global batch); "
                        "several machines: torchrun, see docs/scale-out.md")
    p.add_argument("--folds", type=int, metavar="K", help="K-fold cross-validation: K runs under one folder (--out), each holding out one"
                   " stratified fold (seeded by --seed); prints and writes the pooled held-out metrics (docs/recipes.md)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from cnnlab.engine import launcher, signals

    if launcher.starts_ranks(args.nproc):  # the launcher forwards signals to the ranks it starts
        return _train(args)
    # outside the training loop's own handling (loading; the report after the last epoch) SIGTERM interrupts as Ctrl-C
    # does, so what is being written says so and how to finish it, instead of the process vanishing mid-file
    with signals.handling(signals.interrupt_now):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.engine import distributed, launcher

    starts_ranks = launcher.starts_ranks(args.nproc)  # --nproc N > 1: this process runs N ranks of the same command
    if args.folds is not None or args.resume and _is_cross_validation(args.resume):  # orchestration, not a TrainConfig field
        return cmd_cross_validate(args, starts_ranks)
    if args.resume:
        given = [k for k in CONFIG_KEYS if getattr(args, k, None) not in (None, False)]
        if given or args.config or args.out:
            raise ConfigError("--resume continues a run exactly as configured — drop the other options (--nproc may change)")
        if starts_ranks:
            return launcher.launch(args.nproc, args.argv)
        result = api.train(resume=args.resume, quiet=args.quiet)
    else:
        cfg = config_from_args(args)
        launcher.check_torchrun_config(cfg)
        if starts_ranks:  # the config is checked once here; each rank parses the same command line again
            return launcher.launch_training(cfg, args.nproc, args.argv, api.auto_plan, log=None if args.quiet else print)
        from cnnlab.engine.device import process_age

        result = api.train(cfg.model, cfg.data, config=cfg, out=args.out, overwrite=args.overwrite, quiet=args.quiet,
                           spent_seconds=process_age() if args.count_startup else 0.0)  # the budget covers the whole command, start-up included
    if not distributed.is_main_process():  # rank 0 reports for the run
        return 0
    print(f"run folder: {result.run_dir}")
    if (result.run_dir / "report.html").is_file():
        print(f"report: {result.run_dir / 'report.html'} (open it in a browser)")
    skipped = _lines(result.run_dir / "bad_files.txt")
    if skipped:  # training went on without them: say so where it is seen, not only in the file
        print(f"warning: skipped {skipped} unreadable image(s) — {result.run_dir / 'bad_files.txt'} lists each with its reason",
              file=sys.stderr)
    if result.test:
        print(f"test accuracy: {result.test['accuracy']:.4f} (loss {result.test['loss']:.4f}, {result.test['n']} images)")
        if "map" in result.test:  # multi-label: accuracy is per label; these say more
            print(f"test mAP: {result.test['map'] if result.test['map'] is not None else float('nan'):.4f}, micro-F1"
                  f" {result.test['micro_f1']:.4f}, macro-F1 {result.test['macro_f1']:.4f}, exact match {result.test['exact_match']:.4f}")
    return 0


def _lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
    except OSError:
        return 0


def _is_cross_validation(path: str) -> bool:
    from cnnlab.engine.kfold import fold_of, is_cross_validation

    if (fold := fold_of(path)) is not None:
        raise ConfigError(f"{path} is fold {fold[1]} of the cross-validation {fold[0]} — resume the whole cross-validation:"
                          f" cnnlab train --resume {fold[0]}")
    return is_cross_validation(path)


def cmd_cross_validate(args: argparse.Namespace, starts_ranks: bool) -> int:
    """`cnnlab train --folds K` and `cnnlab train --resume CROSS_VALIDATION_FOLDER`."""
    from cnnlab import api
    from cnnlab.engine.device import process_age

    if args.nproc > 1 or starts_ranks:
        raise ConfigError("--folds trains its folds one after another in one process — drop --nproc")
    spent = process_age() if args.count_startup else 0.0  # each fold's time budget covers the start-up, as one run's would
    if args.resume:
        if args.folds is not None:
            raise ConfigError(f"--folds with --resume: {args.resume} continues with the folds it started with — drop --folds")
        given = [k for k in CONFIG_KEYS if getattr(args, k, None) not in (None, False)]
        if given or args.config or args.out:
            raise ConfigError("--resume continues a cross-validation exactly as configured — drop the other options")
        result = api.cross_validate(resume=args.resume, quiet=args.quiet, spent_seconds=spent)
    else:
        cfg = config_from_args(args)
        result = api.cross_validate(cfg.model, cfg.data, folds=args.folds, config=cfg, out=args.out, overwrite=args.overwrite,
                                    quiet=args.quiet, spent_seconds=spent)
    print(result)
    print(f"report: {result.root / 'report.html'} (open it in a browser)")
    return 0


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a command line: the --config file (if any), then the flags that were given."""
    from cnnlab.config import config_from_dict, load_config_file

    base = config_from_dict(load_config_file(args.config), source=Path(args.config).name) if args.config else None
    overrides = {k: getattr(args, k) for k in CONFIG_KEYS if hasattr(args, k)}
    if args.model_file:
        from cnnlab.models.layer_list import read_model_file

        overrides["model"] = "layer_list"
        overrides["model_args"] = [*overrides.get("model_args", []), ("layers", read_model_file(args.model_file))]
    for key in ("model_args", "aug_args", "class_weights"):  # KEY=VALUE flags add to the config file's, one key at a time
        if key in overrides:
            overrides[key] = {**(getattr(base, key) if base else {}), **dict(overrides[key])}
    return config_from_dict(overrides, base=base, source="command line").validate()
