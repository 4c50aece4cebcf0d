"""What a training run shows while it works: a rich progress bar on a terminal, one line per epoch everywhere."""

from __future__ import annotations


class Progress:
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
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
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
        if row.get("val_map") is not None:  # multi-label
            msg += f"  val_mAP {row['val_map']:.3f}"
        msg += f"  lr {row['lr']:.2g}  {row['seconds']:.1f}s"
        self.console.print(msg, soft_wrap=True)

    def print(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg, soft_wrap=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
