# Copyright (c) convmixer_mm contributors. All rights reserved.
"""An mmengine ``Runner`` with safe, atomic checkpoints and CPU DDP."""
import errno
import logging
import os
import os.path as osp
import re
import subprocess
from typing import Callable, Optional, Sequence, Tuple, Union

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

    mmengine writes the ``last_checkpoint`` pointer in place, so a run
    killed at that instant leaves it empty. Checkpoints themselves are
    written atomically, so the newest ``epoch_N.pth`` / ``iter_N.pth`` on
    disk is then complete and is used instead.
    """
    named = find_latest_checkpoint(work_dir)
    if named and osp.isfile(named):
        return named
    if not osp.isdir(work_dir):
        return None
    found = []
    for name in os.listdir(work_dir):
        match = re.fullmatch(r'(epoch|iter)_(\d+)\.pth', name)
        if match:
            found.append((osp.getmtime(osp.join(work_dir, name)),
                          int(match.group(2)), name))
    return osp.join(work_dir, max(found)[2]) if found else None


def _slurm_to_torch_env() -> None:
    """Set torch's rendezvous variables from a Slurm task's, as mmengine's
    ``init_dist('slurm')`` does: rank 0 runs on the first node of the job,
    on port ``MASTER_PORT`` (default 29500)."""
    env = os.environ
    env.setdefault('MASTER_ADDR', subprocess.check_output(
        ['scontrol', 'show', 'hostnames', env['SLURM_NODELIST']],
        text=True).split()[0])
    env.setdefault('MASTER_PORT', '29500')
    env.update(RANK=env['SLURM_PROCID'], WORLD_SIZE=env['SLURM_NTASKS'],
               LOCAL_RANK=env['SLURM_LOCALID'])


# mmengine's RUNNERS, not mmpretrain's: tools (ours and mmpretrain's) build
# `runner_type` through the root registry, which does not switch scope.
@RUNNERS.register_module()
class ConvMixerRunner(Runner):
    """mmengine's ``Runner`` with these changes; select it in a config with
    ``runner_type = 'ConvMixerRunner'``.

    - Checkpoints hold only allowlisted types (see
      :func:`weights_only_pickling`) and are written to a temporary file,
      fsynced and renamed in place, so a run killed while saving never
      leaves a truncated checkpoint (``last_checkpoint`` is only updated
      after the rename).
    - Checkpoints load with ``weights_only=True`` (see
      :mod:`convmixer_mm.engine.checkpoint`), and a missing, corrupt,
      unsafe or mismatching checkpoint raises :class:`CheckpointError` with
      the fix. Testing and resuming need every key and shape to match;
      ``load_from`` for fine-tuning tolerates a different ``head``.
    - Without an accelerator, ``launcher='pytorch'`` and ``'slurm'`` run
      DDP on CPU with the gloo backend.
    - A resumed run is seeded with the checkpoint's seed from the start, so
      its sampler and dataloader workers are seeded as before; a full disk
      while saving raises :class:`CheckpointError`, keeping the previous
      checkpoints.
    """

    def __init__(self, *args, **kwargs) -> None:
        # Read the checkpoint to load (or resume) before anything is
        # written, so that a bad one is reported first; it is read once.
        source = kwargs.get('load_from')
        if kwargs.get('resume') and not source and kwargs.get('work_dir'):
            source = latest_checkpoint(kwargs['work_dir'])
        self._preloaded = (source, load_checkpoint_file(source)) \
            if source else (None, None)
        if kwargs.get('resume') and source:
            kwargs['randomness'] = dict(
                kwargs.get('randomness') or {},
                seed=self._preloaded[1].get('meta', {}).get('seed'))
        super().__init__(*args, **kwargs)

    def setup_env(self, env_cfg: dict) -> None:
        """Set up the environment; init gloo for CPU-only distributed runs
        (mmengine's ``init_dist`` would select a CUDA device)."""
        if (self.launcher in ('pytorch', 'slurm') and not is_distributed()
                and not has_accelerator()):
            if self.launcher == 'slurm':
                _slurm_to_torch_env()
            torch_dist.init_process_group(backend='gloo')
        super().setup_env(env_cfg)

    def _log_env(self, env_cfg: dict) -> None:
        """Log the environment; without an accelerator, say gloo and CPU
        processes where mmengine would print the config's nccl and a
        "GPU number"."""
        if has_accelerator():
            super()._log_env(env_cfg)
            return

        def cpu_words(record: logging.LogRecord) -> bool:
            record.msg = str(record.msg).replace('GPU number:',
                                                 'CPU processes:')
            return True

        dist_cfg = dict(env_cfg.get('dist_cfg') or {}, backend='gloo')
        self.logger.addFilter(cpu_words)
        try:
            super()._log_env(dict(env_cfg, dist_cfg=dist_cfg))
        finally:
            self.logger.removeFilter(cpu_words)

    def wrap_model(self, model_wrapper_cfg: Optional[dict],
                   model: torch.nn.Module) -> torch.nn.Module:
        """Wrap the model; on CPU, DDP must not be given ``device_ids``."""
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
    def save_checkpoint(self,
                        out_dir: str,
                        filename: str,
                        file_client_args: Optional[dict] = None,
                        **kwargs) -> None:
        """Save a checkpoint (mmengine's arguments); atomically when
        ``out_dir`` is local."""
        kwargs['file_client_args'] = file_client_args
        backend = get_file_backend(
            out_dir, backend_args=kwargs.get('backend_args'))
        with weights_only_pickling():
            if file_client_args is not None or not isinstance(
                    backend, LocalBackend):
                super().save_checkpoint(out_dir, filename, **kwargs)
                return

            def write(tmp: str) -> None:
                super(ConvMixerRunner, self).save_checkpoint(
                    osp.dirname(tmp), osp.basename(tmp), **kwargs)

            try:
                atomic_save_bytes(osp.join(out_dir, filename), write)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                raise CheckpointError(
                    f'no space left to save {filename} in the work dir '
                    f'{out_dir!r}: free space (the previous checkpoints are '
                    'kept) and continue with --resume.') from None

    def load_or_resume(self) -> None:
        """Load or resume; ``--resume auto`` survives a torn pointer file."""
        if self._resume and self._load_from is None and not self._has_loaded:
            self._load_from = latest_checkpoint(self.work_dir)
            if self._load_from is not None:
                self.logger.info(
                    f'Auto resumed from the latest checkpoint '
                    f'{self._load_from}.')
        super().load_or_resume()

    def load_checkpoint(self,
                        filename: str,
                        map_location: Union[str, Callable] = 'cpu',
                        strict: bool = False,
                        revise_keys: Sequence[Tuple[str, str]] = ((
                            r'^module.', ''), )) -> dict:
        """Load a checkpoint into the model, refusing one that does not fit.

        Only fine-tuning (training from ``load_from``) may leave ``strict``
        off and load another head; testing, validating and resuming are
        always strict. ``revise_keys`` is ignored: ``module.`` prefixes
        and the official and timm layouts are renamed by
        :func:`load_weights`. Returns the checkpoint.
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
