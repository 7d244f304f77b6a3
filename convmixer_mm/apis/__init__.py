# Copyright (c) convmixer_mm contributors. All rights reserved.
from .hub import (OFFICIAL_URL_PREFIXES, WeightsNotFoundError,
                  find_model_index, register_models, register_official_loader)

register_models()
register_official_loader()

_INFERENCE = ('classify', 'load_image', 'load_model', 'load_pretrained')
__all__ = [
    'OFFICIAL_URL_PREFIXES', 'WeightsNotFoundError', 'find_model_index',
    'register_models', 'register_official_loader', *_INFERENCE
]


def __getattr__(name: str):
    """The inference API (and the converter it uses) loads on first use, so
    that ``import convmixer_mm`` stays light."""
    if name in _INFERENCE:
        from . import inference
        return getattr(inference, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
