# Copyright (c) convmixer_mm contributors. All rights reserved.
"""A depthwise ``'same'`` convolution with a fast backward on CPU.

aten's CPU depthwise conv spends most of a ConvMixer training step in its
weight gradient. Here the forward, the input gradient (the forward conv of
the output gradient with the kernel rotated by 180 degrees), the weight
gradient and the inference block run in the C kernel ``dwconv.c``, built
at first use with ``$CC`` (else ``cc``) and cached in :func:`kernel_dir`
under a name keyed by the source, flags and CPU. Without it (no compiler,
not on CPU, other dtypes, autocast, exports) :class:`DepthwiseConv2d` is
a plain ``nn.Conv2d``. ``torch.compile`` keeps the ops opaque.
"""
import ctypes
import functools
import hashlib
import logging
import math
import os
import os.path as osp
import platform
import shutil
import subprocess
import tempfile
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from torch.utils.flop_counter import register_flop_formula

SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'dwconv.c')
CFLAGS = ('-O3', '-march=native', '-fno-math-errno', '-shared', '-fPIC',
          '-pthread')
#: The kernels' name suffixes, by the dtypes they run in.
_SUFFIXES = {torch.float32: 'f32', torch.float64: 'f64'}


def kernel_dir() -> str:
    """The directory of compiled kernels (``$CONVMIXER_MM_KERNEL_DIR``)."""
    default = osp.join(
        os.environ.get('XDG_CACHE_HOME', osp.expanduser('~/.cache')),
        'convmixer_mm', 'kernels')
    return os.environ.get('CONVMIXER_MM_KERNEL_DIR', default)


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the machine and its CPU flags."""
    flags = ''
    if osp.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            flags = next(
                (line for line in f if line.startswith(('flags', 'Features'))),
                '')
    return f'{platform.machine()} {platform.processor()} {flags}'


def _flag_sets() -> Tuple[Tuple[str, ...], ...]:
    """The flags to try, best first: with ``-fopenmp`` the kernels share
    torch's OpenMP threads (one ``libgomp.so.1``), about 1.1x faster a
    training step than threads of their own contending with torch's."""
    if 'backend: OpenMP' in torch.__config__.parallel_info():
        return (*CFLAGS, '-fopenmp'), CFLAGS
    return CFLAGS,


def _build(compiler: str, path: str,
           flag_sets: Tuple[Tuple[str, ...], ...]) -> None:
    """Compile with the first flags that work (a compiler may lack
    OpenMP) to a private file, then rename it into place."""
    fd, tmp = tempfile.mkstemp(suffix='.tmp', dir=osp.dirname(path))
    os.close(fd)
    try:
        for i, flags in enumerate(flag_sets, 1):
            # Only the last set's failure raises.
            if not subprocess.run([compiler, *flags, SOURCE, '-o', tmp],
                                  check=i == len(flag_sets),
                                  capture_output=True,
                                  text=True,
                                  timeout=300).returncode:
                break
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


@functools.lru_cache(maxsize=None)
def _library() -> Optional[ctypes.CDLL]:
    """The compiled kernel, built at first use; None if it cannot be."""
    compiler = os.environ.get('CC', 'cc')
    with open(SOURCE, 'rb') as f:
        source = f.read()
    flag_sets = _flag_sets()
    key = hashlib.sha256(b'\0'.join(
        [source, compiler.encode(), repr(flag_sets).encode(),
         _cpu_id().encode()])).hexdigest()[:16]
    path = osp.join(kernel_dir(), f'dwconv_{key}.so')
    try:
        if not osp.exists(path):
            if shutil.which(compiler) is None:
                raise FileNotFoundError(
                    f'no C compiler {compiler!r} on PATH (set $CC)')
            os.makedirs(kernel_dir(), exist_ok=True)
            print_log(
                'compiling the depthwise conv kernel with '
                f'{compiler} (one-time, cached in {kernel_dir()})',
                logger='current')
            _build(compiler, path, flag_sets)
        return ctypes.CDLL(path)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, 'stderr', None) or e
        print_log(
            f'{detail}: using torch\'s depthwise conv, whose CPU backward '
            'is several times slower; install a C compiler (e.g. gcc) or '
            'set $CC to get the fast kernel.',
            logger='current', level=logging.WARNING)
        return None


@torch.compiler.assume_constant_result
def kernel_available() -> bool:
    """Whether the C kernel is built (compiles it at the first call)."""
    return _library() is not None


def _kernel(name: str, dtype: torch.dtype):
    """The C function ``name`` for ``dtype``."""
    return getattr(_library(), f'{name}_{_SUFFIXES[dtype]}')


def _dims(x: torch.Tensor) -> Tuple[ctypes.c_long, ...]:
    b, c, h, w = x.shape
    return tuple(ctypes.c_long(n) for n in (b, h, w, c))


def _ptr(t: Optional[torch.Tensor]) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if t is None else t.data_ptr())


@torch.library.custom_op('convmixer_mm::dwconv_nhwc', mutates_args=())
def _conv(x: torch.Tensor, weight: torch.Tensor,
          bias: Optional[torch.Tensor], pad: int) -> torch.Tensor:
    """Depthwise conv of ``x``, padded ``pad`` on top and left and the rest
    after, so that the output has the input's size."""
    # Compiled graphs may hand over other strides than eager's.
    x = x.contiguous(memory_format=torch.channels_last)
    weight = weight.contiguous()
    out = torch.empty_like(x, memory_format=torch.channels_last)
    _kernel('dwconv_forward', x.dtype)(
        _ptr(x), _ptr(weight), _ptr(bias), _ptr(out), *_dims(x),
        ctypes.c_int(weight.shape[-1]), ctypes.c_int(pad), ctypes.c_int(pad),
        ctypes.c_int(torch.get_num_threads()))
    return out


@_conv.register_fake
def _(x, weight, bias, pad):
    return torch.empty_like(x, memory_format=torch.channels_last)


@torch.library.custom_op(
    'convmixer_mm::dwconv_nhwc_grad_weight', mutates_args=())
def _grad_weight(grad_out: torch.Tensor, x: torch.Tensor, kernel_size: int,
                 pad: int) -> torch.Tensor:
    """The weight gradient of :func:`_conv`, shaped ``(C, 1, K, K)``."""
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    grad = x.new_empty(x.shape[1], 1, kernel_size, kernel_size)
    _kernel('dwconv_grad_weight', x.dtype)(
        _ptr(grad_out), _ptr(x), _ptr(grad), *_dims(x),
        ctypes.c_int(kernel_size), ctypes.c_int(pad), ctypes.c_int(pad),
        ctypes.c_int(torch.get_num_threads()))
    return grad


@_grad_weight.register_fake
def _(grad_out, x, kernel_size, pad):
    return x.new_empty(x.shape[1], 1, kernel_size, kernel_size)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, _, ctx.pad = inputs
    ctx.save_for_backward(x, weight)


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    kernel_size = weight.shape[-1]
    grad = grad.contiguous(memory_format=torch.channels_last)
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        # The kernel rotated by 180 degrees (index_select: aten's flip
        # takes milliseconds on this small tensor).
        taps = torch.arange(kernel_size**2 - 1, -1, -1, device=weight.device)
        rotated = weight.reshape(weight.shape[0], -1).index_select(1, taps)
        grad_x = _conv(grad, rotated.view_as(weight), None,
                       kernel_size - 1 - ctx.pad)
    if ctx.needs_input_grad[1]:
        grad_w = _grad_weight(grad, x, kernel_size, ctx.pad)
    if ctx.needs_input_grad[2]:
        grad_b = grad.sum((0, 2, 3))
    return grad_x, grad_w, grad_b, None


_conv.register_autograd(_backward, setup_context=_setup_context)


# FLOPs (two per multiply-add) for torch.utils.flop_counter, which counts
# aten's convolutions but not custom ops.
@register_flop_formula(torch.ops.convmixer_mm.dwconv_nhwc)
def _conv_flops(x_shape, w_shape, *args, **kwargs) -> int:
    return 2 * math.prod(x_shape) * w_shape[-2] * w_shape[-1]


@register_flop_formula(torch.ops.convmixer_mm.dwconv_nhwc_grad_weight)
def _grad_weight_flops(grad_shape, x_shape, kernel_size, *args,
                       **kwargs) -> int:
    return 2 * math.prod(x_shape) * kernel_size**2


def kernel_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the C training kernels run: 4-D float32 or float64 CPU
    ``x`` of the weight's dtype, outside autocast and exports."""
    return (x.device.type == 'cpu' and x.dim() == 4
            and x.dtype in _SUFFIXES and weight.dtype == x.dtype
            and not torch.is_autocast_enabled('cpu')
            and not torch.jit.is_scripting() and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export() and kernel_available())


#: ``act`` codes of ``dwconv_block`` in dwconv.c.
BLOCK_ACTS = {'relu': 1, 'gelu': 2}


def block_kernel_applies(x: torch.Tensor) -> bool:
    """Whether :func:`dwconv_block_` runs on ``x``: channels_last CPU input,
    fp32 outside autocast or bf16 autocast, with the kernel built."""
    dtype = torch.get_autocast_dtype('cpu') \
        if torch.is_autocast_enabled('cpu') else x.dtype
    floats = (torch.float32, torch.bfloat16)
    return (x.device.type == 'cpu' and x.dim() == 4 and x.dtype in floats
            and dtype in floats
            and x.is_contiguous(memory_format=torch.channels_last)
            and kernel_available())


@torch.library.custom_op('convmixer_mm::dwconv_block_', mutates_args=('x',))
def dwconv_block_(x: torch.Tensor, in_scale: Optional[torch.Tensor],
                  in_shift: Optional[torch.Tensor], weight: torch.Tensor,
                  bias: torch.Tensor, out_scale: torch.Tensor,
                  act: str) -> None:
    """An eval-mode ConvMixer residual branch and its sum, in place.

    With ``x' = x * in_scale + in_shift`` per channel (the previous BN;
    none if ``in_scale`` is None), overwrites ``x`` with ``x' + out_scale
    * act(conv(x', weight) + bias)``, the depthwise conv zero-padded
    ``'same'``, ``act`` ``'relu'`` or ``'gelu'`` (exact). fp32 or bf16,
    channels_last contiguous, computed in fp32; inference only (see
    :func:`block_kernel_applies`). In place because the kernel has read
    each input row into its ring before it writes that row: no new 8 MB
    activation per block, whose fresh pages cost more than the write.
    """
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(
            'dwconv_block_ writes into x, which must be channels_last '
            'contiguous: pass x.contiguous(memory_format=torch.channels_last)')
    kernel_size = weight.shape[-1]
    # The kernel wants the weights tap-major, (K, K, C): a view without a
    # copy of weights stored so (FusedConvMixerBlock does).
    taps = weight.flatten(1).t()
    in_scale, in_shift, taps, bias, out_scale = (
        None if t is None else t.float().contiguous()
        for t in (in_scale, in_shift, taps, bias, out_scale))
    _kernel('dwconv_block', torch.float32)(
        _ptr(x), _ptr(in_scale), _ptr(in_shift), _ptr(taps), _ptr(bias),
        _ptr(out_scale), ctypes.c_int(BLOCK_ACTS[act]), _ptr(x), *_dims(x),
        ctypes.c_int(kernel_size), ctypes.c_int(x.dtype == torch.bfloat16),
        ctypes.c_int(torch.get_num_threads()))


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(C, C, K, groups=C, padding='same')``, fast on CPU.

    The official ConvMixer's depthwise conv, with ``nn.Conv2d``'s
    parameters, state dict and fallback. Odd kernels store the padding as
    the integer ``K // 2`` (PyTorch's fast path); even ones keep ``'same'``
    (one more pixel right and bottom). Channels_last is the fast layout.

    Args:
        channels (int): Input and output channels.
        kernel_size (int): Side of the square kernel.
        bias (bool): Add a learnt bias. Defaults to True.
        fast (bool): Use the C kernel where it applies. Defaults to True.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True,
                 fast: bool = True) -> None:
        padding = kernel_size // 2 if kernel_size % 2 else 'same'
        super().__init__(channels, channels, kernel_size, groups=channels,
                         padding=padding, bias=bias)
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.fast and kernel_applies(x, self.weight)):
            return super().forward(x)
        cl = torch.channels_last
        # 'same' pads (K - 1) // 2 on the top and left, the rest after.
        out = _conv(x.contiguous(memory_format=cl), self.weight.contiguous(),
                    self.bias, (self.kernel_size[0] - 1) // 2)
        return out if x.is_contiguous(memory_format=cl) else out.contiguous()
