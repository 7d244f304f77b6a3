# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The one checkpoint module: safe reading, the layout table, the fit check
and ``load_weights``.

torch >= 2.6 loads with ``weights_only=True``, which refuses every type not
allowlisted; mmengine 0.10 stores a few of its own and numpy types in a
checkpoint's ``message_hub`` and ``meta``. Importing this module allowlists
exactly those, so our checkpoints load with the check on, while a pickle
whose ``__reduce__`` runs code is still refused.
"""
import argparse
import contextlib
import copyreg
import hashlib
import os
import os.path as osp
import pickle
import re
import zipfile
from collections import OrderedDict
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional,
                    Tuple, Union)
from urllib.parse import urlparse

import mmengine.runner.checkpoint as mm_checkpoint
import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader
from mmengine.runner.checkpoint import load_state_dict

from ..models import ConvMixerClsHead, ConvMixerMM
from ..utils import UserError

StateDict = Dict[str, torch.Tensor]


def _numpy_core(name: str):
    """A ``numpy._core.multiarray`` function (``numpy.core`` before 2.0)."""
    core = getattr(np, '_core', None) or np.core
    return getattr(core.multiarray, name)


#: The non-tensor types of an mmengine 0.10 training checkpoint (found with
#: ``torch.serialization.get_unsafe_globals_in_checkpoint``): the message
#: hub's ``HistoryBuffer``s and numpy scalars, the numpy functions also
#: under their numpy 1.x names.
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
    # timm's training script, which wrote the official release, stores its
    # arguments in the checkpoint.
    argparse.Namespace,
]


def _reduce_history_buffer(buffer: HistoryBuffer) -> tuple:
    # ``HistoryBuffer.__getstate__`` adds the class's table of statistics
    # methods, which pickles as ``builtins.getattr`` calls, which must not
    # be allowlisted. The table is rebuilt on import anyway.
    state = dict(buffer.__dict__)
    state.pop('statistics_methods', None)
    return HistoryBuffer, (), state


@contextlib.contextmanager
def weights_only_pickling() -> Iterator[None]:
    """Within it, ``torch.save`` writes ``HistoryBuffer``s that load with
    ``weights_only=True``."""
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def is_remote(filename: str) -> bool:
    """A ``scheme://`` name that is not an existing local file."""
    return bool(re.match(r'^[a-z][a-z0-9+.-]*://', filename, re.I)) and \
        not osp.isfile(osp.expanduser(filename))


def download_checkpoint(url: str, model_dir: Optional[str] = None,
                        file_name: Optional[str] = None) -> str:
    """Download ``url`` once into torch.hub's cache; return the file.

    torch.hub downloads to a temporary file and moves it in place, so
    concurrent ranks and killed downloads never leave a truncated file
    under the final name.
    """
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    name = file_name or osp.basename(urlparse(url).path) or 'checkpoint.pth'
    path = osp.join(model_dir, name)
    if not osp.isfile(path):
        os.makedirs(model_dir, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, path, progress=False)
        except OSError as e:  # URLError and HTTPError included
            raise CheckpointError(
                f'checkpoint {url!r} could not be downloaded '
                f'({_first_line(e)}): check the URL and the network, or '
                'download it yourself and pass the local file.') from None
    return path


def load_url(url: str, model_dir: Optional[str] = None,
             map_location: Union[str, Callable, None] = 'cpu',
             file_name: Optional[str] = None, **kwargs) -> dict:
    """mmengine's ``load_url``, downloading with :func:`download_checkpoint`
    and reading with :func:`load_checkpoint_file`.

    A download the safe reader refuses is removed from the cache, so it is
    neither kept nor trusted on the next call.
    """
    path = download_checkpoint(url, model_dir, file_name)
    try:
        return load_checkpoint_file(path, map_location)
    except CheckpointError as e:
        os.remove(path)
        raise CheckpointError(str(e).replace(repr(path), repr(url))) from None


def load_checkpoint_file(filename: str,
                         map_location: Union[str, Callable] = 'cpu') -> dict:
    """Load a checkpoint with ``weights_only=True`` and clear errors.

    ``filename`` is a local path (``.safetensors`` too) or a ``scheme://``
    name that one of mmengine's ``CheckpointLoader`` schemes reads (URLs
    through :func:`load_url`). Raises :class:`CheckpointError` if it is
    missing, corrupt, or holds types outside the allowlist.
    """
    if not is_remote(filename):
        return _read_local(filename, map_location)
    return CheckpointLoader.load_checkpoint(filename, map_location)


def _read_local(filename: str, map_location: Union[str, Callable]) -> dict:
    path = osp.expanduser(filename)
    if not osp.isfile(path):
        raise CheckpointError(
            f'checkpoint {filename!r} does not exist: check the path (or '
            'the `last_checkpoint` file of the work dir for --resume auto).')
    if filename.endswith('.safetensors'):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except SafetensorError as e:
            raise CheckpointError(
                f'{filename} is not a safetensors checkpoint: {e}') from None
    corrupt = (f'checkpoint {filename!r} is corrupt or truncated ({{}}): '
               'use an earlier checkpoint of the work dir or save / '
               'download it again.')
    try:
        checkpoint = torch.load(
            path, map_location=map_location, weights_only=True)
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
                corrupt.format('not a valid pickle')) from None
        raise CheckpointError(
            f'checkpoint {filename!r} was refused: it holds Python objects '
            'that are not weights and could run code when loaded '
            f'({" ".join(unsafe)}). Use a checkpoint saved by this '
            'training or a converted one; never turn `weights_only` off '
            'for a file you do not trust.') from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError,
            IndexError, TypeError, zipfile.BadZipFile) as e:
        raise CheckpointError(corrupt.format(_first_line(e))) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'checkpoint {filename!r} holds a {type(checkpoint).__name__}, '
            'not a dict of weights: pass a checkpoint saved by training or '
            'by the converter.')
    verify_sha256(checkpoint, filename)
    return checkpoint


def tensors_sha256(checkpoint: dict) -> str:
    """The sha256 of every tensor of a checkpoint outside its ``meta``.

    Each tensor's path, dtype and shape are hashed with its bytes, so a
    flipped byte, a swapped or a reshaped tensor all change the digest.
    """
    digest = hashlib.sha256()

    def visit(path: str, value) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(f'{path}:{value.dtype}:{list(value.shape)}'.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(
                torch.uint8).numpy())
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(f'{path}.{key}', item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(f'{path}.{index}', item)

    for key, value in checkpoint.items():
        if key != 'meta':
            visit(key, value)
    return digest.hexdigest()


def verify_sha256(checkpoint: dict, filename: str) -> None:
    """Raise if the tensors differ from the ``tensors_sha256`` in the
    ``meta``; a checkpoint without one passes."""
    meta = checkpoint.get('meta')
    expected = meta.get('tensors_sha256') if isinstance(meta, dict) else None
    if expected is not None and tensors_sha256(checkpoint) != expected:
        raise CheckpointError(
            f'checkpoint {filename!r} is corrupt: its tensors do not match '
            'the sha256 saved with them (bit rot, or an incomplete copy): '
            'use an earlier checkpoint of the work dir or copy it again.')


#: Key prefixes of each layout, ``(theirs, ours)``: the one table of
#: renaming. Ours is mmpretrain's, shared with its built-in ``ConvMixer``.
#: The official ``nn.Sequential`` numbers its modules: ``0`` stem conv,
#: ``2`` stem BN, ``3 .. depth+2`` blocks, ``depth+5`` the linear layer.
LAYOUT_PREFIXES: Dict[str, Callable[[int], List[Tuple[str, str]]]] = {
    'mmpretrain': lambda depth: [('backbone.stem.', 'backbone.stem.'),
                                 ('backbone.stages.', 'backbone.stages.'),
                                 ('head.fc.', 'head.fc.')],
    'timm': lambda depth: [('stem.', 'backbone.stem.'),
                           ('blocks.', 'backbone.stages.'),
                           ('head.', 'head.fc.')],
    'official': lambda depth: [('0.', 'backbone.stem.0.'),
                               ('2.', 'backbone.stem.2.'),
                               (f'{depth + 5}.', 'head.fc.')] +
    [(f'{i + 3}.', f'backbone.stages.{i}.') for i in range(depth)],
}
LAYOUTS = tuple(LAYOUT_PREFIXES)
#: Where a checkpoint may wrap its state dict.
WRAPPER_KEYS = ('state_dict', 'model', 'state_dict_ema')


def _sample(mapping: Mapping, n: int = 6) -> str:
    keys = list(mapping)
    more = f', ... ({len(keys)} in all)' if len(keys) > n else ''
    return ', '.join(map(str, keys[:n])) + more


def extract_state_dict(checkpoint: Any, use_ema: bool = False) -> StateDict:
    """The tensors of a loaded checkpoint, in file order, without a
    ``module.`` prefix: the checkpoint itself, or the dict it holds under
    ``state_dict`` or ``model`` (``state_dict_ema`` with ``use_ema``)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            'A checkpoint must be a dict of tensors or a dict wrapping one, '
            f'got {type(checkpoint).__name__}.')
    keys = ('state_dict_ema', ) if use_ema else WRAPPER_KEYS
    state = next((checkpoint[k]
                  for k in keys if isinstance(checkpoint.get(k), Mapping)),
                 None)
    if state is None:
        if use_ema:
            raise CheckpointError(
                'use_ema was requested but the checkpoint has no '
                f'state_dict_ema; its top-level keys: {_sample(checkpoint)}.')
        state = checkpoint
    if not state or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            'The checkpoint holds no state dict of tensors (looked under '
            f'{list(keys)} and at the top level, which has keys '
            f'{_sample(checkpoint)}): pass a checkpoint saved by training '
            'or by the converter.')
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k,
                        v) for k, v in state.items())


def detect_layout(state: StateDict) -> Optional[str]:
    """Name the ConvMixer layout of a state dict, or None if it has none."""
    if 'backbone.stem.0.weight' in state:
        return 'mmpretrain'
    if 'stem.0.weight' in state and 'blocks.0.0.fn.0.weight' in state:
        return 'timm'
    if '0.weight' in state and '3.0.fn.0.weight' in state:
        return 'official'
    return None


def count_blocks(state: Mapping, key: str, first: int = 0) -> int:
    """How many of ``key.format(first)``, ``key.format(first + 1)``, ...
    are in ``state``."""
    depth = 0
    while key.format(first + depth) in state:
        depth += 1
    return depth


def _rename(state: StateDict, pairs: List[Tuple[str, str]],
            layout: str) -> StateDict:
    renamed, unknown = OrderedDict(), []
    for key, value in state.items():
        src = next((s for s, _ in pairs if key.startswith(s)), None)
        if src is None:
            unknown.append(key)
        else:
            renamed[dict(pairs)[src] + key[len(src):]] = value
    if unknown:
        raise CheckpointError(
            f'Keys that a ConvMixer in the {layout} layout does not have: '
            f'{unknown[:8]}' + (' ...' if len(unknown) > 8 else '') +
            '. Is this a checkpoint of another model?')
    return renamed


def to_mm_layout(state: StateDict) -> Tuple[StateDict, str]:
    """Rename any ConvMixer state dict to the mmpretrain layout; return it
    and the detected source layout."""
    layout = detect_layout(state)
    if layout is None:
        raise CheckpointError(
            'This is not a ConvMixer checkpoint: it has neither the '
            'official (0.*, 3.0.fn.*), the timm (stem.*, blocks.*) nor the '
            'mmpretrain (backbone.stem.*, backbone.stages.*) keys. Its '
            f'keys: {_sample(state)}.')
    depth = count_blocks(state, '{}.0.fn.0.weight', first=3)
    return _rename(state, LAYOUT_PREFIXES[layout](depth), layout), layout


def from_mm_layout(state: StateDict, layout: str) -> StateDict:
    """Rename an mmpretrain-layout state dict to ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f'Unknown layout {layout!r}: choose one of '
                         f'{list(LAYOUTS)}.')
    depth = count_blocks(state, 'backbone.stages.{}.0.fn.0.weight')
    pairs = [(ours, theirs)
             for theirs, ours in LAYOUT_PREFIXES[layout](depth)]
    return _rename(state, pairs, 'mmpretrain')


def model_shapes(arch: Mapping[str, int]) -> Dict[str, Tuple[int, ...]]:
    """Every key and shape of our classifier of ``arch`` (the essential
    keys, ``in_channels`` and ``num_classes``), read from the model built
    on the meta device (no memory, no init), so it cannot drift from it."""
    with torch.device('meta'):
        parts = dict(
            backbone=ConvMixerMM(
                {k: arch[k]
                 for k in ConvMixerMM.essential_keys},
                in_channels=arch['in_channels']),
            head=ConvMixerClsHead(arch['num_classes'], arch['embed_dims']))
    return {
        f'{name}.{key}': tuple(value.shape)
        for name, part in parts.items()
        for key, value in part.state_dict().items()
    }


def mismatches(state: Mapping[str, torch.Tensor],
               shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, str]:
    """What is wrong with each bad key: ``missing from the checkpoint``,
    ``not in the model`` or ``checkpoint (a, b) vs model (c, d)``."""
    problems = {}
    for key, shape in shapes.items():
        if key not in state:
            problems[key] = 'missing from the checkpoint'
        elif tuple(state[key].shape) != tuple(shape):
            problems[key] = (f'checkpoint {tuple(state[key].shape)} vs model '
                             f'{tuple(shape)}')
    for key in state:
        if key not in shapes:
            problems[key] = 'not in the model'
    return problems


def raise_mismatches(state: Mapping[str, torch.Tensor],
                     shapes: Mapping[str, Tuple[int, ...]],
                     what: str,
                     fix: str = '',
                     limit: int = 10) -> None:
    """If there are :func:`mismatches`, raise a :class:`CheckpointError`
    that says ``what``, lists ``limit`` of them, then says ``fix``."""
    problems = mismatches(state, shapes)
    if not problems:
        return
    lines = [f'  {key}: {why}' for key, why in list(problems.items())[:limit]]
    if len(problems) > limit:
        lines.append(f'  ... and {len(problems) - limit} more')
    raise CheckpointError('\n'.join(
        [f'{what} ({len(problems)} mismatched keys):', *lines] +
        [fix] * bool(fix)))


def check_fits(model: nn.Module,
               checkpoint: dict,
               filename: str,
               strict: bool,
               tolerated_prefix: str = 'head.') -> StateDict:
    """The state dict of a loaded checkpoint (any ConvMixer layout) in the
    model's keys; a :class:`CheckpointError` in one line unless it fits.

    Not ``strict`` (fine-tuning with ``load_from``), keys under
    ``tolerated_prefix`` may be missing, extra or of another shape; some
    key must be shared in any case.
    """
    state = extract_state_dict(checkpoint)
    if detect_layout(state) in ('official', 'timm'):
        state = to_mm_layout(state)[0]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [(k, why) for k, why in mismatches(state, shapes).items()
                if strict or not k.startswith(tolerated_prefix)]
    if not problems and set(shapes) & set(state):
        return state
    summary = []
    for start, label in (('checkpoint', 'shape mismatches'),
                         ('missing', 'missing keys'),
                         ('not', 'unexpected keys')):
        found = [f'{k}: {why}' for k, why in problems if why.startswith(start)]
        if found:
            summary.append(f'{len(found)} {label} (e.g. {found[0]})')
    raise CheckpointError(
        f'checkpoint {filename!r} does not fit the model of this config: '
        f'{"; ".join(summary) or "no key in common"}. It was trained for '
        'another architecture: use the config it was trained with, or a '
        'checkpoint of this model.')


def load_weights(model: nn.Module,
                 source: Union[str, dict],
                 strict: bool = True,
                 name: Optional[str] = None) -> dict:
    """Load a checkpoint file or a loaded checkpoint into the unwrapped
    ``model`` after :func:`check_fits`; return the checkpoint. ``name``
    names it in messages (default: the path).

    The one way weights reach a model: for testing, resuming, fine-tuning,
    inference, the hub, the converter and the benchmark.
    """
    if isinstance(source, str):
        checkpoint, name = load_checkpoint_file(source), name or source
    else:
        checkpoint, name = source, name or 'checkpoint'
    state = check_fits(model, checkpoint, name, strict)
    # mmengine's loader skips (and logs) the tolerated head mismatches.
    load_state_dict(model, state, strict=strict)
    return checkpoint


torch.serialization.add_safe_globals(SAFE_GLOBALS)
# Every checkpoint mmengine reads goes through the safe reader. mmengine
# 0.10 reads URLs (and the ``open-mmlab://``, ``torchvision://`` and
# ``mmcls://`` names that end in URLs) with torch.hub's ``load_url``, which
# unpickles with ``weights_only`` off: a checkpoint URL could run code.
# Replacing the ``load_url`` its http(s) scheme calls, and its local-file
# scheme, makes ``load_from``, ``resume``, ``init_cfg=dict(type='Pretrained')``
# and mmpretrain's ``get_model(pretrained=...)`` safe.
mm_checkpoint.load_url = load_url
CheckpointLoader.register_scheme(
    '', lambda name, map_location=None: _read_local(name, map_location),
    force=True)
