"""Where training reports progress. The library prints plain lines; the CLI swaps in progress bars."""
from __future__ import annotations

import sys


class Reporter:
    """Receives the run's events: log lines, each epoch's start, each step, each epoch's row."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def log(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, images: int, loss: float) -> None:
        pass

    def epoch_end(self, row: dict) -> None:
        val = (f"val top-1 {row['val_top1']:.2f}%  top-5 {row['val_top5']:.2f}%" if row["val_top1"] is not None
               else "not validated")
        self.log(f"epoch {row['epoch']}/{row['epochs']}: loss {row['train_loss']:.4f}  {val}  "
                 f"{row['images_per_s']:.0f} img/s  {row['epoch_time_s']:.0f}s")

    def close(self) -> None:
        pass
