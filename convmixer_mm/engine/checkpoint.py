# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Checkpoints that load with ``weights_only`` and are written atomically.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, which
refuses every Python type that is not allowlisted, while mmengine 0.10
stores a few of its own and numpy types in the ``message_hub`` and ``meta``
of a checkpoint. Importing this module (done by ``import convmixer_mm``)
allowlists exactly those types, so our checkpoints load for testing,
``load_from`` and ``resume`` with the check still on; anything else, such
as a pickle whose ``__reduce__`` runs code, is still refused.
"""
import contextlib
import copyreg
import os.path as osp
import pickle
import re
import zipfile
from typing import Callable, Dict, Iterator, List, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

from ..utils import UserError

def _numpy_core(name: str):
    """A ``numpy._core.multiarray`` function (``numpy.core`` before 2.0)."""
    core = getattr(np, '_core', None) or np.core
    return getattr(core.multiarray, name)


#: Every non-tensor type an mmengine 0.10 training checkpoint holds, found
#: with ``torch.serialization.get_unsafe_globals_in_checkpoint``: the
#: message hub's ``HistoryBuffer``s of float64 / int64 arrays and its
#: numpy scalars (the ETA). The numpy functions are also allowed under
#: their numpy 1.x names, so checkpoints saved with either numpy load.
SAFE_GLOBALS = [
    HistoryBuffer,
    np.ndarray,
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Int64DType,
    _numpy_core('_reconstruct'),
    _numpy_core('scalar'),
    (_numpy_core('_reconstruct'), 'numpy.core.multiarray._reconstruct'),
    (_numpy_core('scalar'), 'numpy.core.multiarray.scalar'),
]


def _reduce_history_buffer(buffer: HistoryBuffer) -> tuple:
    """Pickle a ``HistoryBuffer`` without its statistics methods.

    ``HistoryBuffer.__getstate__`` adds the class-level table of statistics
    methods, which pickle protocol 2 can only write as ``getattr(HistoryBuffer,
    'min')`` calls, and ``builtins.getattr`` must not be allowlisted. The
    table is rebuilt on import anyway, and ``__setstate__`` accepts a state
    without it.
    """
    state = dict(buffer.__dict__)
    state.pop('statistics_methods', None)
    return HistoryBuffer, (), state


@contextlib.contextmanager
def weights_only_pickling() -> Iterator[None]:
    """Within it, ``torch.save`` writes ``HistoryBuffer``s loadable with
    ``weights_only=True`` (see :func:`_reduce_history_buffer`)."""
    previous = copyreg.dispatch_table.get(HistoryBuffer)
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    try:
        yield
    finally:
        if previous is None:
            del copyreg.dispatch_table[HistoryBuffer]
        else:
            copyreg.dispatch_table[HistoryBuffer] = previous


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable, unsafe or does not fit."""


def register_safe_globals() -> None:
    """Allowlist the types of mmengine checkpoints for ``torch.load``."""
    torch.serialization.add_safe_globals(SAFE_GLOBALS)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else \
        type(error).__name__


def load_checkpoint_file(filename: str,
                         map_location: Union[str, Callable] = 'cpu') -> dict:
    """Load a checkpoint with ``weights_only=True`` and clear errors.

    Args:
        filename (str): A local path, or a URL / ``scheme://`` path that
            mmengine's ``CheckpointLoader`` understands.
        map_location (str | Callable): As in ``torch.load``.
            Defaults to 'cpu'.

    Returns:
        dict: The checkpoint.

    Raises:
        CheckpointError: The file is missing, corrupt or truncated, or holds
            types outside the allowlist (and might run code if unpickled).
    """
    local = '://' not in filename
    if local and not osp.isfile(osp.expanduser(filename)):
        raise CheckpointError(
            f'checkpoint {filename!r} does not exist: check the path (or '
            'the `last_checkpoint` file of the work dir for --resume auto).')
    try:
        if local:
            checkpoint = torch.load(
                osp.expanduser(filename),
                map_location=map_location,
                weights_only=True)
        else:
            checkpoint = _load_checkpoint(filename, map_location=map_location)
    except pickle.UnpicklingError as e:
        # The weights-only unpickler names the Python object it refused
        # ("unsupported GLOBAL posix.system", "Can only build ..."); any
        # other failure means the bytes are not a valid pickle.
        unsafe = [
            line.strip() for line in str(e).splitlines()
            if re.search(r'global|can only build|call reduce', line, re.I)
            and 'torch.load' not in line
        ]
        if not unsafe:
            raise CheckpointError(
                f'checkpoint {filename!r} is corrupt or truncated (not a '
                'valid pickle): use an earlier checkpoint of the work dir '
                'or save / download it again.') from None
        raise CheckpointError(
            f'checkpoint {filename!r} was refused: it holds Python objects '
            'that are not weights and could run code when loaded '
            f'({" ".join(unsafe)}). Use a checkpoint saved by this '
            'training or a converted one; never turn `weights_only` off '
            'for a file you do not trust.') from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError,
            IndexError, TypeError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f'checkpoint {filename!r} is corrupt or truncated '
            f'({_first_line(e)}): use an earlier checkpoint of the work dir '
            'or save / download it again.') from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'checkpoint {filename!r} holds a {type(checkpoint).__name__}, '
            'not a dict of weights: pass a checkpoint saved by training or '
            'by the converter.')
    return checkpoint


def _strip_prefix(state_dict: Dict[str, torch.Tensor],
                  prefix: str = 'module.') -> Dict[str, torch.Tensor]:
    return {
        k[len(prefix):] if k.startswith(prefix) else k: v
        for k, v in state_dict.items()
    }


def check_fits(model: nn.Module,
               checkpoint: dict,
               filename: str,
               strict: bool,
               tolerated_prefix: str = 'head.') -> None:
    """Raise unless the checkpoint's weights fit the model.

    Args:
        model (nn.Module): The unwrapped model.
        checkpoint (dict): A loaded checkpoint, with or without a
            ``state_dict`` key.
        filename (str): Its name, for the message.
        strict (bool): Every key and shape must match. When False (fine-
            tuning with ``load_from``), keys under ``tolerated_prefix`` may
            be missing, extra or of another shape.
        tolerated_prefix (str): See ``strict``. Defaults to 'head.'.

    Raises:
        CheckpointError: Keys or shapes differ beyond what is tolerated, or
            no key is shared at all.
    """
    state = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f'checkpoint {filename!r} has no state_dict of tensors: pass a '
            'checkpoint saved by training or by the converter.')
    state = _strip_prefix(state)
    own = model.state_dict()

    def counts(key: str) -> bool:
        return strict or not key.startswith(tolerated_prefix)

    missing = [k for k in own if k not in state and counts(k)]
    unexpected = [k for k in state if k not in own and counts(k)]
    mismatched = [
        f'{k}: checkpoint {tuple(state[k].shape)} vs model '
        f'{tuple(own[k].shape)}' for k in own
        if k in state and state[k].shape != own[k].shape and counts(k)
    ]
    if not (missing or unexpected or mismatched) and set(own) & set(state):
        return
    problems: List[str] = []
    for name, items in (('shape mismatches', mismatched),
                        ('missing keys', missing), ('unexpected keys',
                                                    unexpected)):
        if items:
            problems.append(f'{len(items)} {name} (e.g. {items[0]})')
    raise CheckpointError(
        f'checkpoint {filename!r} does not fit the model of this config: '
        f'{"; ".join(problems) or "no key in common"}. It was trained for '
        'another architecture: use the config it was trained with, or a '
        'checkpoint of this model.')
