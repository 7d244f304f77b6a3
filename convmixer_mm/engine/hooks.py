# Copyright (c) convmixer_mm contributors. All rights reserved.
"""A progress bar for testing."""
from typing import Optional, Sequence

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
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
