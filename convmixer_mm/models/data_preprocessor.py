# Copyright (c) convmixer_mm contributors. All rights reserved.
"""A classification data preprocessor with a channels_last switch."""
import torch

from mmpretrain.models.utils import ClsDataPreprocessor
from mmpretrain.registry import MODELS


@MODELS.register_module()
class ConvMixerDataPreprocessor(ClsDataPreprocessor):
    """``ClsDataPreprocessor`` that can hand the model channels_last input.

    Args:
        channels_last (bool): Convert the batch to
            ``torch.channels_last`` after normalization and batch
            augmentation. Defaults to False.
        **kwargs: Arguments of ``ClsDataPreprocessor``.
    """

    def __init__(self, channels_last: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.channels_last = channels_last

    def forward(self, data: dict, training: bool = False) -> dict:
        data = super().forward(data, training)
        inputs = data['inputs']
        if self.channels_last and isinstance(inputs, torch.Tensor) \
                and inputs.dim() == 4:
            data['inputs'] = inputs.contiguous(
                memory_format=torch.channels_last)
        return data
