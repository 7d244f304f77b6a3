# Copyright (c) convmixer_mm contributors. All rights reserved.
from .hub import (OFFICIAL_URL_PREFIXES, WeightsNotFoundError,
                  find_model_index, register_models, register_official_loader)
from .inference import (classify, load_image, load_model, load_pretrained,
                        topk_predictions)

register_models()
register_official_loader()

__all__ = [
    'OFFICIAL_URL_PREFIXES', 'WeightsNotFoundError', 'classify',
    'find_model_index', 'load_image', 'load_model', 'load_pretrained',
    'register_models', 'register_official_loader', 'topk_predictions'
]
