# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Exact inference-time fusion of ConvMixer's layers.

An eval-mode block's seven memory passes (depthwise conv, act, BN,
residual add, 1x1 conv, act, BN) become four, with the same arithmetic up
to rounding: each act (exact GELU or ReLU) is a oneDNN post-op of its
conv, and each BN ``x * scale + shift`` an ``addcmul``, the residual
branch's shift moved into the next 1x1 conv's bias. On CPU with
channels_last input, fp32 or bf16 autocast, :func:`run_fused` makes it
two: the C kernel ``dwconv_block_`` (which applies the previous BN as it
reads its input, then the whole residual branch, in place) and the 1x1
conv.
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops.dwconv import dwconv_block_

#: oneDNN post-op names and algorithms of the activations it fuses.
POST_OPS = {nn.GELU: ('gelu', 'none'), nn.ReLU: ('relu', '')}


def storage_key(t: torch.Tensor) -> Tuple[int, int]:
    """``t``'s storage and version, which an in-place change, ``.to()`` or
    ``load_state_dict`` changes. A tensor made under
    ``torch.inference_mode`` has no version counter: an in-place change to
    it goes unseen (change weights outside inference mode)."""
    return t.data_ptr(), 0 if t.is_inference() else t._version


def fusion_problem(conv: nn.Conv2d, act: nn.Module, bn: nn.Module) -> str:
    """Why ``bn(act(conv(x)))`` cannot be fused, or '' if it can."""
    if type(act) not in POST_OPS or \
            getattr(act, 'approximate', 'none') != 'none':
        return f'the activation {act!r} is not the exact GELU or ReLU'
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or \
            not bn.track_running_stats:
        return f'{bn!r} is not a BatchNorm with running statistics'
    return ''


def bn_affine(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(scale, shift)`` with ``bn(x) == x * scale + shift``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


class FusedConvActBN(nn.Module):
    """``BN(act(conv(x)))`` in eval mode as one conv and one ``addcmul``.

    It holds a snapshot of the weights (buffers): rebuild it after the
    source modules change. The conv's ``'same'`` padding, one more pixel
    right and bottom for even kernels, becomes an explicit ``F.pad``.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        problem = fusion_problem(conv, act, bn)
        if problem:
            raise TypeError(f'Cannot fuse: {problem}.')
        self.post_op = POST_OPS[type(act)]
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else \
            weight.new_zeros(weight.shape[0])
        scale, shift = bn_affine(bn)
        self.register_buffer('weight', weight.clone())
        self.register_buffer('bias', bias.clone())
        self.register_buffer('scale', scale.view(1, -1, 1, 1).clone())
        self.register_buffer('shift', shift.view(1, -1, 1, 1).clone())
        self.pad: Tuple[int, ...] = ()
        padding = conv.padding
        if padding == 'same':
            for k, d in zip(conv.kernel_size[::-1], conv.dilation[::-1]):
                total = d * (k - 1)
                self.pad += (total // 2, total - total // 2)
            padding = (0, 0)
        self.conv_args: Tuple[List[int], List[int], List[int], int] = (
            list(padding), list(conv.stride), list(conv.dilation),
            conv.groups)
        self._packed: Dict[tuple, torch.Tensor] = {}

    def conv_act(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``act(conv(x))``, fused by oneDNN on CPU."""
        padding, stride, dilation, groups = self.conv_args
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self.pad:
            x = F.pad(x, self.pad)
        if x.device.type == 'cpu' and torch.backends.mkldnn.is_available() \
                and x.dtype in (torch.float32, torch.bfloat16):
            attr, algorithm = self.post_op
            return torch.ops.mkldnn._convolution_pointwise(
                x, self._packed_weight(x), self.bias.to(x.dtype), padding,
                stride, dilation, groups, attr, [], algorithm)
        y = F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype),
                     stride, padding, dilation, groups)
        return F.gelu(y) if self.post_op[0] == 'gelu' else F.relu(y)

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's blocked layout, reordered once per shape
        (a plain one is reordered per call, costly at small batches) and
        keyed on its storage and version, which ``.to()`` and
        ``load_state_dict`` change."""
        key = (tuple(x.shape), x.dtype, storage_key(self.weight))
        if key not in self._packed:
            padding, stride, dilation, groups = self.conv_args
            self._packed.clear()
            self._packed[key] = \
                torch.ops.mkldnn._reorder_convolution_weight(
                    self.weight.to(x.dtype), padding, stride, dilation,
                    groups, list(x.shape))
        return self._packed[key]

    def __getstate__(self) -> dict:
        # oneDNN tensors cannot be pickled or deep-copied; they are rebuilt.
        state = super().__getstate__()
        state['_packed'] = {}
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_act(x)
        return torch.addcmul(self.shift.to(y.dtype), y,
                             self.scale.to(y.dtype), out=y)


class FusedConvMixerBlock(nn.Module):
    """One eval-mode block ``Sequential(Residual(Sequential(dwconv, act,
    BN)), conv1x1, act, BN)`` of a ``ConvMixerMM`` in four memory passes
    (its drop path, the identity in eval mode, left out)."""

    def __init__(self, block: nn.Sequential) -> None:
        super().__init__()
        residual, pwconv, act, bn = block
        self.dw = FusedConvActBN(*residual.fn)
        self.pw = FusedConvActBN(pwconv, act, bn)
        # The residual BN's shift reaches the 1x1 conv through the sum only,
        # so it becomes part of that conv's bias: W(x + s*h + t) + b
        # == W(x + s*h) + (W t + b).
        self.pw.bias += self.pw.weight.flatten(1) @ self.dw.shift.flatten()
        self.dw.shift.zero_()
        # Tap-major, (K, K, C), as dwconv_block_ reads them: no copy per call.
        taps = self.dw.weight.permute(2, 3, 1, 0).contiguous()
        self.dw.weight = taps.permute(3, 2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw.conv_act(x)
        x = torch.addcmul(x, h, self.dw.scale.to(h.dtype), out=h)
        return self.pw(x)

    def forward_pending(
        self, u: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block on ``u * scale + shift``, that BN left pending; the
        result is pending its own last BN likewise. Overwrites ``u``."""
        dwconv_block_(u, scale, shift, self.dw.weight, self.dw.bias,
                      self.dw.scale, self.dw.post_op[0])
        return self.pw.conv_act(u), self.pw.scale, self.pw.shift


def run_fused(stem: FusedConvActBN, blocks: Sequence[FusedConvMixerBlock],
              x: torch.Tensor,
              out_indices: Sequence[int]) -> Tuple[torch.Tensor, ...]:
    """The outputs of blocks ``out_indices`` through the C block kernel
    (where :func:`block_kernel_applies`): each BN is applied by the next
    block as it reads its input, and materialised only for the outputs."""
    outs = []
    u, scale, shift = stem.conv_act(x), stem.scale, stem.shift
    for i, block in enumerate(blocks):
        u, scale, shift = block.forward_pending(u, scale, shift)
        if i in out_indices:
            outs.append(torch.addcmul(shift, u, scale).to(u.dtype))
    return tuple(outs)
