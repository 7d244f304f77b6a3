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
import os
import os.path as osp
import pickle
import re
import zipfile
from typing import Callable, Dict, Iterator, List, Optional, Union
from urllib.parse import urlparse

import mmengine.runner.checkpoint as mm_checkpoint
import numpy as np
import torch
import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

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


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe or does not fit."""


def register_safe_globals() -> None:
    """Allowlist the types of mmengine checkpoints for ``torch.load``."""
    torch.serialization.add_safe_globals(SAFE_GLOBALS)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else \
        type(error).__name__


def is_remote(filename: str) -> bool:
    """A ``scheme://`` name that is not an existing local file."""
    return bool(re.match(r'^[a-z][a-z0-9+.-]*://', filename, re.I)) and \
        not osp.isfile(osp.expanduser(filename))


def download_checkpoint(url: str, model_dir: Optional[str] = None,
                        file_name: Optional[str] = None) -> str:
    """Download ``url`` into torch.hub's checkpoint cache, once.

    The download goes to a temporary sibling and is renamed in place when
    complete, so concurrent ranks and killed downloads never leave a
    truncated file under the final name.

    Returns:
        str: The cached file.
    """
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    name = file_name or osp.basename(urlparse(url).path) or 'checkpoint.pth'
    path = osp.join(model_dir, name)
    if osp.isfile(path):
        return path
    os.makedirs(model_dir, exist_ok=True)
    tmp = f'{path}.{os.getpid()}.part'
    try:
        torch.hub.download_url_to_file(url, tmp, progress=False)
        os.replace(tmp, path)
    except OSError as e:  # URLError and HTTPError included
        raise CheckpointError(
            f'checkpoint {url!r} could not be downloaded ({_first_line(e)}): '
            'check the URL and the network, or download it yourself and '
            'pass the local file.') from None
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return path


def load_url(url: str,
             model_dir: Optional[str] = None,
             map_location: Union[str, Callable, None] = 'cpu',
             file_name: Optional[str] = None,
             **kwargs) -> dict:
    """Download a checkpoint and read it with :func:`load_checkpoint_file`.

    A download the safe reader refuses (unsafe or corrupt) is removed from
    the cache, so it is neither kept nor trusted on the next call. Takes
    the arguments of mmengine's ``load_url`` (``torch.hub``'s), which it
    replaces (see :func:`route_remote_loads`).
    """
    path = download_checkpoint(url, model_dir, file_name)
    try:
        return load_checkpoint_file(path, map_location)
    except CheckpointError as e:
        os.remove(path)
        raise CheckpointError(str(e).replace(repr(path), repr(url))) from None


def _load_from_http(filename: str, map_location=None, **kwargs) -> dict:
    """mmengine's http(s) scheme; each rank reads the shared cached file."""
    rank, world_size = get_dist_info()
    if rank == 0 or world_size == 1:
        checkpoint = load_url(filename, map_location=map_location)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = load_url(filename, map_location=map_location)
    return checkpoint


def _load_from_local(filename: str, map_location=None) -> dict:
    return _read_local(filename, map_location)


def route_remote_loads() -> None:
    """Send every checkpoint mmengine reads through the safe reader.

    mmengine 0.10 reads http(s) checkpoints (and, through them,
    ``open-mmlab://``, ``torchvision://`` and ``mmcls://`` names) with
    ``torch.hub.load_state_dict_from_url``, which unpickles with
    ``weights_only=False``: a checkpoint URL could run code. Those schemes
    and local files are re-registered here, and the module-level
    ``load_url`` that the indirect schemes call is replaced, so that
    ``load_from``, ``resume``, ``init_cfg=dict(type='Pretrained')`` and
    mmpretrain's ``get_model(pretrained=...)`` all use
    :func:`load_checkpoint_file`.
    """
    mm_checkpoint.load_url = load_url
    CheckpointLoader.register_scheme(
        ['http://', 'https://'], _load_from_http, force=True)
    CheckpointLoader.register_scheme('', _load_from_local, force=True)


def load_checkpoint_file(filename: str,
                         map_location: Union[str, Callable] = 'cpu') -> dict:
    """Load a checkpoint with ``weights_only=True`` and clear errors.

    Args:
        filename (str): A local path, or a ``scheme://`` name that one of
            mmengine's ``CheckpointLoader`` schemes reads: ``http(s)://``
            URLs are downloaded once into torch.hub's cache and read here
            (see :func:`route_remote_loads`), the official release's URLs
            are also converted (see ``convmixer_mm.apis.hub``).
        map_location (str | Callable): As in ``torch.load``.
            Defaults to 'cpu'.

    Returns:
        dict: The checkpoint.

    Raises:
        CheckpointError: The file is missing, corrupt or truncated, or holds
            types outside the allowlist (and might run code if unpickled).
    """
    if not is_remote(filename):
        return _read_local(filename, map_location)
    return CheckpointLoader.load_checkpoint(filename, map_location)


def _read_local(filename: str, map_location: Union[str, Callable]) -> dict:
    if not osp.isfile(osp.expanduser(filename)):
        raise CheckpointError(
            f'checkpoint {filename!r} does not exist: check the path (or '
            'the `last_checkpoint` file of the work dir for --resume auto).')
    try:
        checkpoint = torch.load(
            osp.expanduser(filename),
            map_location=map_location,
            weights_only=True)
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


def atomic_save_bytes(path: str, write: Callable[[str], None]) -> None:
    """Write a file through a temporary sibling, then rename it in place.

    ``write`` writes the temporary path; the data is then fsynced and
    ``os.replace``-d onto ``path``, and the directory entry fsynced, so a
    crash leaves either the old file or the new one, never a truncated one.

    Args:
        path (str): The final path.
        write (Callable[[str], None]): Writes the whole file to the path
            it is given.
    """
    directory, name = osp.split(osp.abspath(path))
    tmp = osp.join(directory, f'.{name}.{os.getpid()}.part')
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
