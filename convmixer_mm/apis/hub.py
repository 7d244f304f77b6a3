# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Our model names in mmpretrain's ``ModelHub``, and checkpoint loaders
that convert the official release's URLs and local official or timm files
as they load them, so that mmpretrain's ``get_model``, ``inference_model``
and ``load_from`` take them and never leave a model at random weights."""
import os
import os.path as osp
from typing import Any, Optional, Tuple

import torch
from mmengine.runner import CheckpointLoader
from modelindex.load_model_index import load

from mmpretrain.apis import ModelHub
from ..engine.checkpoint import (CheckpointError, detect_layout,
                                 download_checkpoint, extract_state_dict,
                                 load_checkpoint_file, load_url)
from ..utils import UserError

# The official release (locuslab/convmixer's README links the tmp-iclr
# mirror, which mmpretrain's metafile also uses).
OFFICIAL_URL_PREFIXES = (
    'https://github.com/tmp-iclr/convmixer/releases/download/',
    'https://github.com/locuslab/convmixer/releases/download/',
)
# Set to 1 to never download: missing weights then fail at once.
OFFLINE_ENV = 'CONVMIXER_MM_OFFLINE'
CONVERTER = 'tools/model_converters/convmixer_to_mm.py'


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Pretrained weights that are neither on disk nor downloadable."""


def find_model_index() -> Tuple[str, str]:
    """``model-index.yml`` and the folder its config paths start at:
    ``convmixer_mm/.mim`` when installed, else the repository root."""
    package = osp.dirname(osp.dirname(osp.abspath(__file__)))
    roots = (osp.join(package, '.mim'), osp.dirname(package))
    for root in roots:
        path = osp.join(root, 'model-index.yml')
        if osp.isfile(path):
            return path, root
    raise FileNotFoundError(
        f'model-index.yml is in none of {list(roots)}: reinstall '
        'convmixer_mm (pip install -e .).')


def register_models() -> None:
    """Register our model index with mmpretrain's ``ModelHub`` (once)."""
    path, root = find_model_index()
    index = load(path)
    index.build_models_with_collections()
    if not all(ModelHub.has(model.name.lower()) for model in index.models):
        ModelHub.register_model_index(path, config_prefix=root)


def missing_weights_message(source: str,
                            url: Optional[str] = None,
                            reason: str = 'not found') -> str:
    """How to get the missing weights ``source``: fetch the official
    ``url`` (default: ``source``), convert, pass."""
    url = url or source
    name = osp.basename(url)
    return (f'Pretrained weights {source} are {reason}. Fetch the official '
            f'weights on a machine with internet (wget {url}), convert '
            f'them with `python {CONVERTER} {name} converted.pth`, and pass '
            "pretrained='converted.pth' (or --pretrained converted.pth). "
            f'Putting {name} in {_cache()} also works offline.')


def _cache() -> str:
    """torch.hub's checkpoint cache."""
    return osp.join(torch.hub.get_dir(), 'checkpoints')


def fetch_official_weights(url: str) -> str:
    """The cached file of an official URL, downloaded if needed."""
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
    """mmengine's loader for the official URLs: fetch and convert."""
    from .converter import convert_state_dict  # not at `import convmixer_mm`
    fetch_official_weights(filename)
    state, meta = convert_state_dict(load_url(filename))
    meta['source_file'] = osp.basename(filename)
    return dict(state_dict=state, meta=meta)


def load_from_local_any_layout(filename: str, map_location=None) -> Any:
    """mmengine's loader for local files: official and timm ConvMixer
    checkpoints are converted to ours, others load unchanged."""
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
    """Route the official URLs and local files through our loaders."""
    CheckpointLoader.register_scheme(
        list(OFFICIAL_URL_PREFIXES), load_from_official_release, force=True)
    CheckpointLoader.register_scheme('', load_from_local_any_layout,
                                     force=True)
