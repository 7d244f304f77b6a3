# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Hooks: a progress bar for testing, ``torch.compile`` for training."""
import shutil
import warnings
from typing import Optional, Sequence

import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
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
class CompileModelHook(Hook):
    """``torch.compile`` submodules of the model in place before training.

    mmengine's ``compile=True`` compiles the whole ``train_step``, whose
    logging and optimizer code make dynamo recompile every iteration (on
    2 CPU cores the Fashion-MNIST config then trains at a third of eager
    speed). Compiling the network alone gives the fused kernels without
    that; ``nn.Module.compile`` keeps the state-dict keys. On CPU it needs
    a C++ compiler (without one it warns and leaves the model eager) and
    compiles for tens of seconds at start, cached across runs.

    Args:
        modules (Sequence[str]): Attribute names of the submodules to
            compile. Defaults to ``('backbone', )``.
        **kwargs: Arguments of ``torch.compile``.

    Example:
        >>> custom_hooks = [dict(type='CompileModelHook')]
    """
    priority = 'VERY_HIGH'

    def __init__(self,
                 modules: Sequence[str] = ('backbone', ),
                 **kwargs) -> None:
        self.modules = tuple(modules)
        self.kwargs = kwargs

    def before_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        if not self._can_compile(model):
            warnings.warn(
                'CompileModelHook: no C++ compiler (g++/c++) on PATH for '
                "torch.compile's CPU backend; training uncompiled. Install "
                'g++ to get the faster compiled model.')
            return
        for name in self.modules:
            module = getattr(model, name, None)
            if not isinstance(module, nn.Module):
                raise ValueError(
                    f'CompileModelHook: the model has no submodule '
                    f'{name!r}; set modules= to some of '
                    f'{[n for n, _ in model.named_children()]}.')
            module.compile(**self.kwargs)

    def _can_compile(self, model: nn.Module) -> bool:
        """Whether inductor can generate CPU code, when it has to."""
        backend = self.kwargs.get('backend', 'inductor')
        on_cpu = all(p.device.type == 'cpu' for p in model.parameters())
        if backend != 'inductor' or not on_cpu:
            return True
        return any(shutil.which(cxx) for cxx in ('g++', 'c++', 'clang++'))
