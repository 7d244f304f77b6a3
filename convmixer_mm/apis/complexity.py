# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Parameters and FLOPs of a model, with mmengine's counter."""
import math
from collections import Counter
from typing import Any, Dict, List, Sequence, Union

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape
from mmengine.config import Config

from ..engine.config import load_config
from .onnx_export import build_classifier


def _conv_mode_flops(inputs: List[Any], outputs: List[Any]) -> Counter:
    """Count ``aten::_convolution_mode``, a conv with string padding.

    PyTorch traces ``nn.Conv2d(padding='same')`` to this op, which
    mmengine's (and fvcore's) counter skips with a warning: mmpretrain's
    ConvMixer, whose depthwise convs all use ``'same'``, is undercounted by
    exactly those convs. As for ``aten::_convolution``, one multiply-add is
    one FLOP and the bias is ignored: out elements x in_channels / groups x
    kernel elements.
    """
    weight, out = get_shape(inputs[1]), get_shape(outputs[0])
    return Counter({'conv': math.prod(out) * math.prod(weight[1:])})


def _attention_flops(inputs: List[Any], outputs: List[Any]) -> Counter:
    """Count ``aten::scaled_dot_product_attention``: QK^T and attn @ V."""
    query, key, value = (get_shape(v) for v in inputs[:3])
    return Counter({
        'attention':
        math.prod(query[:-2]) * query[-2] * key[-2] * (query[-1] + value[-1])
    })


def count_complexity(model: nn.Module,
                     input_shape: Sequence[int]) -> Dict[str, int]:
    """Parameters and FLOPs (multiply-adds) of one forward pass.

    mmengine's ``FlopAnalyzer`` with two more ops: convs with
    ``padding='same'`` and PyTorch's fused attention, which it would count
    as zero. Activations and residual additions are not counted, as in
    mmengine.

    Args:
        model (nn.Module): The model; called as ``model(x)``, which for an
            mmpretrain classifier is the ``'tensor'`` mode (backbone, neck
            and head).
        input_shape (Sequence[int]): ``(C, H, W)`` of one image.

    Returns:
        dict: ``params`` and ``flops`` (for batch size 1).

    Example:
        >>> from convmixer_mm.apis.complexity import count_complexity
        >>> from convmixer_mm.models import ConvMixerMM
        >>> arch = dict(embed_dims=16, depth=2, patch_size=4, kernel_size=4)
        >>> result = count_complexity(ConvMixerMM(arch), (3, 32, 32))
        >>> print(result['params'], result['flops'])
        2032 124928
    """
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or min(input_shape) <= 0:
        raise ValueError(f'input_shape={input_shape} must be (C, H, W) of '
                         'positive ints.')
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, (torch.zeros(1, *input_shape), ))
            analyzer.set_op_handle(
                'aten::_convolution_mode', _conv_mode_flops,
                'aten::scaled_dot_product_attention', _attention_flops)
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            flops = analyzer.total()
    finally:
        model.train(was_training)
    return dict(params=parameter_count(model)[''], flops=flops)


def config_complexity(config: Union[str, Config],
                      shape: Sequence[int] = (224, 224)) -> Dict[str, Any]:
    """Parameters and FLOPs of the model a config builds.

    Args:
        config (str | Config): Config file or object.
        shape (Sequence[int]): ``H``, ``(H, W)`` or ``(C, H, W)``; C
            defaults to ``model.backbone.in_channels`` (3 when unset).
            Defaults to ``(224, 224)``.

    Returns:
        dict: ``params``, ``flops`` and the ``input_shape`` used.
    """
    if isinstance(config, str):
        config = load_config(config)
    input_shape = tuple(shape) * (2 if len(shape) == 1 else 1)
    if len(input_shape) == 2:
        channels = config.model.get('backbone', {}).get('in_channels', 3)
        input_shape = (channels, ) + input_shape
    if len(input_shape) != 3:
        raise ValueError(f'shape={input_shape} must be H, (H, W) or '
                         '(C, H, W).')
    result = count_complexity(build_classifier(config), input_shape)
    result['input_shape'] = input_shape
    return result
