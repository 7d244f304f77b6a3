# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Training-mode ``residual + BatchNorm(act(x))`` in two passes each way.

In a CPU training step aten runs ConvMixer's act, BN and residual sum as
four ops of about eight memory passes each way, a fifth of the step.
:func:`act_bn` runs them in the C kernel of ``dwconv.c`` with the same
arithmetic (batch statistics, ``nn.BatchNorm2d``'s running-stat update,
exact GELU or ReLU) in two passes each way, and keeps only ``x`` for the
backward, recomputing ``act(x)``. Elsewhere it calls the modules.
"""
import ctypes
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .dwconv import BLOCK_ACTS, _kernel, _ptr, kernel_applies


def _rows(x: torch.Tensor) -> Tuple[ctypes.c_long, ctypes.c_long]:
    return ctypes.c_long(x.numel() // x.shape[1]), ctypes.c_long(x.shape[1])


@torch.library.custom_op('convmixer_mm::act_bn_train', mutates_args=())
def _forward(x: torch.Tensor, residual: Optional[torch.Tensor],
             weight: torch.Tensor, bias: torch.Tensor, eps: float,
             act: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(residual + bn(act(x)), batch mean, biased batch variance)``."""
    cl = torch.channels_last
    x = x.contiguous(memory_format=cl)
    if residual is not None:
        residual = residual.contiguous(memory_format=cl)
    # Locals: a temporary would be freed before the C call reads it.
    weight, bias = weight.contiguous(), bias.contiguous()
    y = torch.empty_like(x, memory_format=cl)
    mean = x.new_empty(x.shape[1])
    var = x.new_empty(x.shape[1])
    if _kernel('act_bn_forward', x.dtype)(
            _ptr(x), _ptr(residual), _ptr(weight), _ptr(bias),
            ctypes.c_double(eps),
            ctypes.c_int(BLOCK_ACTS[act]), _ptr(y), _ptr(mean), _ptr(var),
            *_rows(x), ctypes.c_int(torch.get_num_threads())):
        raise MemoryError('act_bn_forward: out of memory')
    return y, mean, var


@_forward.register_fake
def _(x, residual, weight, bias, eps, act):
    return (torch.empty_like(x, memory_format=torch.channels_last),
            x.new_empty(x.shape[1]), x.new_empty(x.shape[1]))


@torch.library.custom_op(
    'convmixer_mm::act_bn_train_backward', mutates_args=())
def _backward_op(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                 var: torch.Tensor, weight: torch.Tensor, eps: float,
                 act: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of :func:`_forward`'s ``y`` for x, weight and bias."""
    grad = grad.contiguous(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = weight.contiguous()
    grad_x = torch.empty_like(x, memory_format=torch.channels_last)
    grad_w, grad_b = torch.empty_like(weight), torch.empty_like(weight)
    if _kernel('act_bn_backward', x.dtype)(
            _ptr(grad), _ptr(x), _ptr(mean), _ptr(var), _ptr(weight),
            ctypes.c_double(eps),
            ctypes.c_int(BLOCK_ACTS[act]), _ptr(grad_x), _ptr(grad_w),
            _ptr(grad_b), *_rows(x), ctypes.c_int(torch.get_num_threads())):
        raise MemoryError('act_bn_backward: out of memory')
    return grad_x, grad_w, grad_b


@_backward_op.register_fake
def _(grad, x, mean, var, weight, eps, act):
    return (torch.empty_like(x, memory_format=torch.channels_last),
            weight.new_empty(weight.shape), weight.new_empty(weight.shape))


def _setup_context(ctx, inputs, output) -> None:
    x, residual, weight, _, ctx.eps, ctx.act = inputs
    _, mean, var = output
    ctx.save_for_backward(x, mean, var, weight)
    ctx.has_residual = residual is not None
    ctx.mark_non_differentiable(mean, var)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad, *_):
    if grad is None:
        return None, None, None, None, None, None
    x, mean, var, weight = ctx.saved_tensors
    grad_x, grad_w, grad_b = _backward_op(grad, x, mean, var, weight,
                                          ctx.eps, ctx.act)
    return (grad_x, grad if ctx.has_residual else None, grad_w, grad_b,
            None, None)


_forward.register_autograd(_backward, setup_context=_setup_context)


def _act_name(act: nn.Module) -> Optional[str]:
    if type(act) is nn.ReLU:
        return 'relu'
    if type(act) is nn.GELU and act.approximate == 'none':
        return 'gelu'
    return None


def applies(x: torch.Tensor, act: nn.Module, bn: nn.Module) -> bool:
    """Whether :func:`act_bn` runs the kernel: a training, affine
    ``BatchNorm2d`` tracking statistics after ``ReLU`` or exact ``GELU``,
    on channels_last ``x`` where :func:`kernel_applies`."""
    return (type(bn) is nn.BatchNorm2d and bn.training and bn.affine
            and bn.track_running_stats and _act_name(act) is not None
            and kernel_applies(x, bn.weight) and x.numel() > x.shape[1]
            and x.is_contiguous(memory_format=torch.channels_last))


def act_bn(x: torch.Tensor, act: nn.Module, bn: nn.Module,
           residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``residual + bn(act(x))``, with the modules' side effects (running
    statistics, ``num_batches_tracked``) but, where :func:`applies`, not
    their forward hooks."""
    if not applies(x, act, bn) or (residual is not None
                                   and residual.shape != x.shape):
        y = bn(act(x))
        return y if residual is None else residual + y
    y, mean, var = _forward(x, residual, bn.weight, bn.bias, bn.eps,
                            _act_name(act))
    # nn.BatchNorm2d's update: momentum None is a cumulative average.
    bn.num_batches_tracked.add_(1)
    factor = (1.0 / float(bn.num_batches_tracked)
              if bn.momentum is None else bn.momentum)
    n = x.numel() // x.shape[1]
    with torch.no_grad():
        bn.running_mean.lerp_(mean, factor)
        bn.running_var.lerp_(var * (n / (n - 1)), factor)
    return y
