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

from .onnx_export import build_classifier, chw_shape


def _conv_mode_flops(inputs: List[Any], outputs: List[Any]) -> Counter:
    """Count ``aten::_convolution_mode``, the traced ``nn.Conv2d(padding=
    'same')`` that mmengine skips (so it undercounts mmpretrain's
    ConvMixer): as ``aten::_convolution``, one multiply-add per out element
    x in_channels / groups x kernel elements, bias ignored."""
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
    """Parameters and FLOPs (multiply-adds) of ``model(x)`` for one
    ``(C, H, W)`` image.

    mmengine's ``FlopAnalyzer`` with two more ops that it counts as zero:
    convs with ``padding='same'`` and PyTorch's fused attention.
    Activations and residual additions are not counted, as in mmengine.

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
    """Parameters, FLOPs and the ``input_shape`` (see :func:`chw_shape`)
    of the model a config (file or object) builds."""
    model = build_classifier(config)
    input_shape = chw_shape(model, shape)
    return dict(count_complexity(model, input_shape), input_shape=input_shape)
