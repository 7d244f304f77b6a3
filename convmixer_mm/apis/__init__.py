# Copyright (c) convmixer_mm contributors. All rights reserved.
from .hub import (OFFICIAL_URL_PREFIXES, WeightsNotFoundError,
                  find_model_index, register_models, register_official_loader)
from .inference import (get_model, inference_model, load_image, load_weights,
                        topk_predictions)

register_models()
register_official_loader()

__all__ = [
    'OFFICIAL_URL_PREFIXES', 'WeightsNotFoundError', 'find_model_index',
    'get_model', 'inference_model', 'load_image', 'load_weights',
    'register_models', 'register_official_loader', 'topk_predictions'
]
