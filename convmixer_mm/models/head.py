# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The ConvMixer classification head: global pooling, dropout, linear."""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from mmpretrain.models.heads import ClsHead
from mmpretrain.registry import MODELS


@MODELS.register_module()
class ConvMixerClsHead(ClsHead):
    """Global average pooling, optional dropout and a linear classifier.

    The pooling lives in the head, as in the official model, so an
    ``ImageClassifier`` needs no neck and the keys are ``head.fc.*``. Loss,
    label smoothing and Mixup/CutMix soft targets come from ``ClsHead``.

    After a ``GlobalAveragePooling`` neck it stands in for
    ``LinearClsHead``: pooled ``(B, C)`` features pass through unchanged.

    Args:
        num_classes (int): Number of categories.
        in_channels (int): Channels of the backbone's last feature map.
        dropout (float): Dropout before ``fc``. Defaults to 0.
        init_cfg (dict, optional): Defaults to None, PyTorch's default
            ``nn.Linear`` init as in the official code.
        **kwargs: ``loss``, ``topk`` and ``cal_acc`` of ``ClsHead``.

    Example:
        >>> import torch
        >>> from convmixer_mm.models import ConvMixerClsHead
        >>> head = ConvMixerClsHead(num_classes=10, in_channels=16)
        >>> print(tuple(head((torch.rand(2, 16, 7, 7), )).shape))
        (2, 10)
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 dropout: float = 0.,
                 init_cfg: Optional[Union[dict, list]] = None,
                 **kwargs) -> None:
        super().__init__(init_cfg=init_cfg, **kwargs)
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(
                f'num_classes={num_classes!r} must be a positive int: set '
                'head.num_classes to the number of classes in the dataset.')
        if not 0 <= dropout < 1:
            raise ValueError(f'dropout={dropout} must be in [0, 1).')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)

    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """Pool the last feature map to ``(B, C)``; pooled input is kept."""
        feat = feats[-1]
        if feat.dim() == 2:
            return feat
        if feat.dim() == 4:
            return self.pool(feat).flatten(1)
        raise ValueError(
            f'ConvMixerClsHead takes (B, C, H, W) feature maps or pooled '
            f'(B, C) features, got shape {tuple(feat.shape)}: use a '
            'backbone (and neck) that returns one of these.')

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """Return the class scores."""
        return self.fc(self.dropout(self.pre_logits(feats)))
