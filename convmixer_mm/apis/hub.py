# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Our model names in mmpretrain's ``ModelHub`` and the official weights.

Importing ``convmixer_mm`` registers ``model-index.yml`` with mmpretrain,
so ``mmpretrain.list_models``, ``get_model`` and ``inference_model`` know
our names, and registers checkpoint loaders for the official release's
URLs and for local files that convert official and timm weights as they
load them (so ``mmpretrain.get_model(..., pretrained=FILE)`` and
``load_from`` never leave the model at random weights).
"""
import os
import os.path as osp
from typing import Any, List, Optional, Tuple

import torch
from mmengine.runner import CheckpointLoader
from modelindex.load_model_index import load

from mmpretrain.apis import ModelHub
from ..engine.checkpoint import (CheckpointError, detect_layout,
                                 download_checkpoint, extract_state_dict,
                                 load_checkpoint_file)
from ..utils import UserError

#: Where the official release lives (the README of locuslab/convmixer
#: links the tmp-iclr mirror, which mmpretrain's metafile also uses).
OFFICIAL_URL_PREFIXES = (
    'https://github.com/tmp-iclr/convmixer/releases/download/',
    'https://github.com/locuslab/convmixer/releases/download/',
)
#: Set to 1 to never download: missing weights then fail at once.
OFFLINE_ENV = 'CONVMIXER_MM_OFFLINE'
CONVERTER = 'tools/model_converters/convmixer_to_mm.py'


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Pretrained weights that are neither on disk nor downloadable."""


def find_model_index() -> Tuple[str, str]:
    """The path of ``model-index.yml`` and the folder its config paths
    start at: ``convmixer_mm/.mim`` in installed packages, the repository
    root in a source checkout."""
    package = osp.dirname(osp.dirname(osp.abspath(__file__)))
    roots = (osp.join(package, '.mim'), osp.dirname(package))
    for root in roots:
        path = osp.join(root, 'model-index.yml')
        if osp.isfile(path):
            return path, root
    raise FileNotFoundError(
        f'model-index.yml is in none of {list(roots)}: reinstall '
        'convmixer_mm (pip install -e .).')


def register_models() -> List[str]:
    """Register our model index with mmpretrain's ``ModelHub`` (once);
    return our model names."""
    path, root = find_model_index()
    index = load(path)
    index.build_models_with_collections()
    names = [model.name.lower() for model in index.models]
    if not all(ModelHub.has(name) for name in names):
        ModelHub.register_model_index(path, config_prefix=root)
    return names


def missing_weights_message(source: str,
                            url: Optional[str] = None,
                            reason: str = 'not found') -> str:
    """How to get the weights ``source`` (a path or URL) that are not there
    for ``reason``: fetch the official ``url`` (default: ``source``),
    convert, pass."""
    url = url or source
    name = osp.basename(url)
    return (f'Pretrained weights {source} are {reason}. Fetch the official '
            f'weights on a machine with internet (wget {url}), convert '
            f'them with `python {CONVERTER} {name} converted.pth`, and pass '
            "pretrained='converted.pth' (or --pretrained converted.pth). "
            f'Putting {name} in {_cache()} also works offline.')


def _cache() -> str:
    """torch.hub's checkpoint cache, where downloads are kept."""
    return osp.join(torch.hub.get_dir(), 'checkpoints')


def fetch_official_weights(url: str) -> str:
    """Return the cached file of an official URL, downloading it if needed.

    Raises:
        WeightsNotFoundError: Not cached, and offline or the download
            failed; the message says how to fetch and convert the file.
    """
    if not osp.isfile(osp.join(_cache(), osp.basename(url))) and \
            os.environ.get(OFFLINE_ENV, '0') not in ('', '0'):
        raise WeightsNotFoundError(
            missing_weights_message(
                url,
                reason=f'not cached ({OFFLINE_ENV} is set, so nothing is '
                'downloaded)'))
    try:
        return download_checkpoint(url)
    except CheckpointError as err:
        raise WeightsNotFoundError(
            missing_weights_message(url,
                                    reason=f'unavailable ({err})')) from err


def load_from_official_release(filename: str, map_location=None) -> dict:
    """mmengine checkpoint loader for the official URLs: fetch, convert to
    ``{'state_dict': ..., 'meta': ...}`` in our layout."""
    # Imported on first use: `import convmixer_mm` need not load it.
    from .converter import convert_state_dict
    path = fetch_official_weights(filename)
    try:
        checkpoint = load_checkpoint_file(path)
    except CheckpointError:
        os.remove(path)  # never keep, nor trust later, a refused download
        raise
    state, meta = convert_state_dict(checkpoint)
    meta['source_file'] = osp.basename(filename)
    return dict(state_dict=state, meta=meta)


def load_from_local_any_layout(filename: str, map_location=None) -> Any:
    """mmengine's loader for local files, converting ConvMixer checkpoints
    of the official and timm layouts to ours; others load unchanged.

    Raises:
        CheckpointError: An official or timm file that does not convert;
            the message gives the converter command.
    """
    checkpoint = load_checkpoint_file(filename, map_location)
    try:
        layout = detect_layout(extract_state_dict(checkpoint))
    except CheckpointError:  # Holds no state dict: not for us to judge.
        return checkpoint
    if layout in (None, 'mmpretrain'):  # Ours, or another model's.
        return checkpoint
    from .converter import convert_state_dict
    try:
        state, meta = convert_state_dict(checkpoint)
    except CheckpointError as err:
        raise CheckpointError(
            f'{filename} ({layout} layout) does not convert: {err}\nCheck '
            f'it with `python {CONVERTER} {filename} converted.pth`.') from err
    return dict(state_dict=state, meta=meta)


def register_official_loader() -> None:
    """Route the official URLs through :func:`load_from_official_release`
    and local files through :func:`load_from_local_any_layout`."""
    CheckpointLoader.register_scheme(
        list(OFFICIAL_URL_PREFIXES), load_from_official_release, force=True)
    CheckpointLoader.register_scheme('', load_from_local_any_layout,
                                     force=True)
