# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Progress: a training log line every N iterations or T seconds, and a
progress bar for testing."""
import time
from typing import Optional, Sequence

from mmengine.dist import is_main_process
from mmengine.hooks import Hook, LoggerHook
from mmengine.utils import ProgressBar

from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class TestProgressBarHook(Hook):
    """Show a progress bar with the ETA over the test batches.

    Only the main process draws it; it counts batches of that process.
    """

    # Before the LoggerHook (BELOW_NORMAL) prints the metrics.
    priority = 'NORMAL'

    def __init__(self) -> None:
        self._bar: Optional[ProgressBar] = None

    def before_test_epoch(self, runner) -> None:
        """Start the bar."""
        if is_main_process():
            self._bar = ProgressBar(len(runner.test_dataloader))

    def after_test_iter(self,
                        runner,
                        batch_idx: int,
                        data_batch: Optional[dict] = None,
                        outputs: Optional[Sequence] = None) -> None:
        """Advance the bar by one batch."""
        if self._bar is not None:
            self._bar.update()

    def after_test_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        """End the bar's line."""
        if self._bar is not None:
            self._bar.file.write('\n')
            self._bar.file.flush()
            self._bar = None


@HOOKS.register_module()
class ProgressLoggerHook(LoggerHook):
    """mmengine's ``LoggerHook`` that also logs a training line (with the
    ETA) whenever ``time_interval`` seconds have passed since the last one,
    so a slow machine is never silent for long.

    The extra lines go to the log only; ``vis_data/scalars.json`` keeps its
    every-``interval`` entries.

    Args:
        time_interval (float): Longest silence in seconds. Defaults to 10.
        **kwargs: ``LoggerHook``'s arguments, ``interval`` included.
    """

    def __init__(self, time_interval: float = 10., **kwargs) -> None:
        super().__init__(**kwargs)
        self.time_interval = time_interval
        self._last_line = time.monotonic()

    def before_train(self, runner) -> None:
        """Start the clock."""
        self._last_line = time.monotonic()

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        """Log every ``interval`` iterations or ``time_interval`` s."""
        regular = self.every_n_inner_iters(
            batch_idx, self.interval) or self.end_of_epoch(
                runner.train_dataloader, batch_idx)
        now = time.monotonic()
        if regular:
            super().after_train_iter(runner, batch_idx, data_batch, outputs)
            self._last_line = now
        elif now - self._last_line >= self.time_interval:
            _, log_str = runner.log_processor.get_log_after_iter(
                runner, batch_idx, 'train')
            runner.logger.info(log_str)
            self._last_line = now
