# Copyright (c) convmixer_mm contributors. All rights reserved.
"""An mmengine ``Runner`` with safe, atomic checkpoints and CPU DDP."""
import errno
import logging
import os
import os.path as osp
import re
import subprocess
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed, master_only
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import BaseLoop, Runner, find_latest_checkpoint

from ..utils import atomic_save_bytes
from .checkpoint import (CheckpointError, load_checkpoint_file, load_weights,
                         weights_only_pickling)
from .optim_wrapper import has_accelerator


def latest_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume auto`` continues from, or None.

    mmengine writes its ``last_checkpoint`` pointer in place, so a kill at
    that instant leaves it empty; the newest ``epoch_N.pth`` /
    ``iter_N.pth`` (all written atomically, so complete) is used instead.
    """
    named = find_latest_checkpoint(work_dir)
    if named and osp.isfile(named):
        return named
    found = []
    for name in os.listdir(work_dir) if osp.isdir(work_dir) else ():
        match = re.fullmatch(r'(epoch|iter)_(\d+)\.pth', name)
        if match:
            mtime = osp.getmtime(osp.join(work_dir, name))
            found.append((mtime, int(match.group(2)), name))
    return osp.join(work_dir, max(found)[2]) if found else None


def _slurm_to_torch_env() -> None:
    """Set torch's rendezvous variables from a Slurm task's, as mmengine's
    ``init_dist('slurm')`` does."""
    env = os.environ
    env.setdefault('MASTER_ADDR', subprocess.check_output(
        ['scontrol', 'show', 'hostnames', env['SLURM_NODELIST']],
        text=True).split()[0])
    env.setdefault('MASTER_PORT', '29500')
    env.update(RANK=env['SLURM_PROCID'], WORLD_SIZE=env['SLURM_NTASKS'],
               LOCAL_RANK=env['SLURM_LOCALID'])


def _cpu_words(record: logging.LogRecord) -> bool:
    record.msg = str(record.msg).replace('GPU number:', 'CPU processes:')
    return True


# mmengine's RUNNERS, not mmpretrain's: tools (ours and mmpretrain's) build
# `runner_type` through the root registry, which does not switch scope.
@RUNNERS.register_module()
class ConvMixerRunner(Runner):
    """mmengine's ``Runner`` (``runner_type = 'ConvMixerRunner'``) with:

    - checkpoints holding only allowlisted types, written to a temporary
      file, fsynced and renamed in place: a kill while saving never leaves
      a truncated one; a full disk raises :class:`CheckpointError`;
    - checkpoints read once, with ``weights_only=True``, and refused with
      the fix when missing, corrupt, unsafe or not fitting. Testing and
      resuming are strict; fine-tuning (``load_from``) may change the head;
    - ``launcher='pytorch'`` and ``'slurm'`` running DDP with gloo on CPU;
    - a resumed run seeded with the checkpoint's seed from the start, so
      its sampler and dataloader workers are seeded as before.
    """

    def __init__(self, *args, **kwargs) -> None:
        # Read the checkpoint before anything is written, so that a bad one
        # is reported first. A torn pointer must not stop --resume auto.
        resume = kwargs.get('resume')
        if resume and not kwargs.get('load_from') and kwargs.get('work_dir'):
            kwargs['load_from'] = latest_checkpoint(kwargs['work_dir'])
        source = kwargs.get('load_from')
        checkpoint = load_checkpoint_file(source) if source else None
        self._preloaded = (source, checkpoint)
        if resume and source:
            kwargs['randomness'] = dict(
                kwargs.get('randomness') or {},
                seed=checkpoint.get('meta', {}).get('seed'))
        super().__init__(*args, **kwargs)

    def setup_env(self, env_cfg: dict) -> None:
        # mmengine's init_dist would select a CUDA device.
        if (self.launcher in ('pytorch', 'slurm') and not is_distributed()
                and not has_accelerator()):
            if self.launcher == 'slurm':
                _slurm_to_torch_env()
            torch_dist.init_process_group(backend='gloo')
        super().setup_env(env_cfg)

    def _log_env(self, env_cfg: dict) -> None:
        """On CPU, log gloo and "CPU processes", not nccl and "GPU number"."""
        if has_accelerator():
            return super()._log_env(env_cfg)
        dist_cfg = dict(env_cfg.get('dist_cfg') or {}, backend='gloo')
        self.logger.addFilter(_cpu_words)
        try:
            super()._log_env(dict(env_cfg, dist_cfg=dist_cfg))
        finally:
            self.logger.removeFilter(_cpu_words)

    def wrap_model(self, model_wrapper_cfg: Optional[dict],
                   model: torch.nn.Module) -> torch.nn.Module:
        # DDP on CPU must not be given device_ids.
        if (self.distributed and model_wrapper_cfg is None
                and not has_accelerator()):
            model_wrapper_cfg = dict(
                type='MMDistributedDataParallel',
                device_ids=None,
                broadcast_buffers=False,
                find_unused_parameters=self.cfg.get(
                    'find_unused_parameters', False))
        return super().wrap_model(model_wrapper_cfg, model)

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str,
                        file_client_args: Optional[dict] = None,
                        **kwargs) -> None:
        """mmengine's, atomic when ``out_dir`` is local."""
        kwargs['file_client_args'] = file_client_args
        backend = get_file_backend(
            out_dir, backend_args=kwargs.get('backend_args'))
        save = super().save_checkpoint
        with weights_only_pickling():
            if file_client_args is not None or not isinstance(
                    backend, LocalBackend):
                return save(out_dir, filename, **kwargs)
            try:
                atomic_save_bytes(
                    osp.join(out_dir, filename), lambda tmp: save(
                        osp.dirname(tmp), osp.basename(tmp), **kwargs))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                raise CheckpointError(
                    f'no space left to save {filename} in the work dir '
                    f'{out_dir!r}: free space (the previous checkpoints are '
                    'kept) and continue with --resume.') from None

    def load_checkpoint(self, filename: str, map_location='cpu',
                        strict: bool = False, revise_keys=()) -> dict:
        """Load a checkpoint into the model through :func:`load_weights`,
        which also renames ``module.`` prefixes and other layouts
        (``revise_keys`` is ignored). Only fine-tuning may be non-strict.
        """
        source, self._preloaded = self._preloaded, (None, None)
        checkpoint = source[1] if source[0] == filename else \
            load_checkpoint_file(filename, map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        # --tta wraps the model in a BaseTTAModel, which holds no weights.
        model = self.model.module if is_model_wrapper(
            self.model) or isinstance(self.model, BaseTTAModel) else self.model
        fine_tuning = isinstance(self._train_loop,
                                 BaseLoop) and not self._resume
        load_weights(model, checkpoint, strict or not fine_tuning, filename)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint
