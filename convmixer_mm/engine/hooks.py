# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Hooks: checkpoints safe against kills and bit rot that resume exactly,
progress lines and bar, ``torch.compile`` for training."""
import os.path as osp
import random
import shutil
import time
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook, LoggerHook
from mmengine.model import is_model_wrapper
from mmengine.utils import ProgressBar

from mmpretrain.registry import HOOKS
from ..utils import atomic_save_bytes
from .checkpoint import tensors_sha256


def rng_states() -> dict:
    """The states of the Python, numpy, torch and CUDA generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return dict(
        python=random.getstate(),
        # As a tensor: weights_only loading refuses uint32 arrays.
        numpy=(kind, torch.from_numpy(keys.astype(np.int64)), pos,
               has_gauss, gauss),
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() else [])


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` returned."""
    random.setstate(states['python'])
    kind, keys, *rest = states['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(states['torch'])
    if states['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook``, safe against kills and bit rot, and
    resuming exactly.

    - Outdated checkpoints (``max_keep_ckpts``) are removed only once the
      new one is complete and ``last_checkpoint`` (written atomically)
      names it, so a kill at any moment leaves ``max_keep_ckpts`` complete
      checkpoints; mmengine removes them before saving.
    - ``meta`` holds the sha256 of the tensors, which the reader verifies.
    - The random generators' states are saved and restored on resume;
      validation runs on a copy of them. A run resumed in one process then
      repeats the uninterrupted run bit for bit (persistent dataloader
      workers keep their own states, which are not saved).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resumed_rng: Optional[dict] = None
        self._train_rng: Optional[dict] = None

    def _save_checkpoint_with_step(self, runner, step: int,
                                   meta: dict) -> None:
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        atomic_save_bytes(
            osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in outdated:
            path = self.file_backend.join_path(self.out_dir,
                                               self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['rng_states'] = rng_states()
        checkpoint['meta']['tensors_sha256'] = tensors_sha256(checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if runner._resume and 'rng_states' in checkpoint:
            self._resumed_rng = checkpoint['rng_states']

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self._resumed_rng is not None:
            set_rng_states(self._resumed_rng)
            self._resumed_rng = None

    def before_val(self, runner) -> None:
        self._train_rng = rng_states()

    def after_val(self, runner) -> None:
        if self._train_rng is not None:
            set_rng_states(self._train_rng)
            self._train_rng = None


@HOOKS.register_module()
class TestProgressBarHook(Hook):
    """A progress bar with the ETA over the test batches of the main
    process."""

    # Before the LoggerHook (BELOW_NORMAL) prints the metrics.
    priority = 'NORMAL'

    def __init__(self) -> None:
        self._bar: Optional[ProgressBar] = None

    def before_test_epoch(self, runner) -> None:
        if is_main_process():
            self._bar = ProgressBar(len(runner.test_dataloader))

    def after_test_iter(self, runner, batch_idx: int,
                        data_batch: Optional[dict] = None,
                        outputs: Optional[Sequence] = None) -> None:
        if self._bar is not None:
            self._bar.update()

    def after_test_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        if self._bar is not None:
            self._bar.file.write('\n')
            self._bar.file.flush()
            self._bar = None


@HOOKS.register_module()
class ProgressLoggerHook(LoggerHook):
    """mmengine's ``LoggerHook`` that also logs a training line whenever
    ``time_interval`` seconds have passed since the last one, so a slow
    machine is never silent for long. The extra lines go to the log only,
    not to ``vis_data/scalars.json``.
    """

    def __init__(self, time_interval: float = 10., **kwargs) -> None:
        super().__init__(**kwargs)
        self.time_interval = time_interval
        self._last_line = time.monotonic()

    def before_train(self, runner) -> None:
        self._last_line = time.monotonic()

    def after_train_iter(self, runner, batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        now = time.monotonic()
        if self.every_n_inner_iters(batch_idx, self.interval) or \
                self.end_of_epoch(runner.train_dataloader, batch_idx):
            super().after_train_iter(runner, batch_idx, data_batch, outputs)
        elif now - self._last_line >= self.time_interval:
            runner.logger.info(runner.log_processor.get_log_after_iter(
                runner, batch_idx, 'train')[1])
        else:
            return
        self._last_line = now


@HOOKS.register_module()
class CompileModelHook(Hook):
    """``torch.compile`` the ``modules`` of the model in place before
    training, with ``torch.compile``'s ``**kwargs``.

    mmengine's ``compile=True`` compiles the whole ``train_step``, whose
    logging and optimizer code make dynamo recompile every iteration (on 2
    CPU cores the Fashion-MNIST config then trains at a third of eager
    speed). ``nn.Module.compile`` keeps the state-dict keys. On CPU it
    needs a C++ compiler (without one it warns and stays eager).

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
        on_cpu = all(p.device.type == 'cpu' for p in model.parameters())
        if self.kwargs.get('backend', 'inductor') == 'inductor' and on_cpu \
                and not any(map(shutil.which, ('g++', 'c++', 'clang++'))):
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
