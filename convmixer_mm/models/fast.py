# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Exact inference-time fusion for ConvMixer.

An eval-mode ConvMixer block runs seven memory passes over its activation:
depthwise conv, GELU, BN, residual add, 1x1 conv, GELU, BN. The fused block
below runs four, with the same arithmetic up to float rounding:

- GELU runs inside the convolution as a oneDNN post-op
  (``torch.ops.mkldnn._convolution_pointwise``), so the conv output is
  activated while still in cache;
- BN in eval mode is ``x * scale + shift``; the residual branch's shift
  moves into the bias of the following 1x1 conv (which is linear and only
  reads the residual sum), leaving one ``addcmul`` for scale and add;
- the block's last BN is one ``addcmul``.

The BN that follows the convolution cannot be folded into the conv's
weights because GELU sits between them; the BN after the 1x1 conv cannot
be folded into the next depthwise conv because of its zero padding. The
last BN could move into the classifier's fc through the average pool, but
the backbone's features would then change; it stays (one pass of 82).

:class:`CompileModelHook` is the training-time fast path: it compiles the
model's submodules in place, so checkpoints keep their keys.
"""
import shutil
import types
import warnings
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmpretrain.registry import HOOKS
from .convmixer import ConvMixerMM, Residual


def _bn_affine(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(scale, shift)`` with ``bn(x) == x * scale + shift``."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or \
            not bn.track_running_stats:
        raise TypeError(
            f'Only BatchNorm with running statistics can be fused, got '
            f'{bn!r}: build the backbone with norm_cfg=dict(type="BN") '
            '(or SyncBN) to use fuse_convmixer.')
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


def _gelu_or_raise(act: nn.Module) -> None:
    if not isinstance(act, nn.GELU) or act.approximate != 'none':
        raise TypeError(
            f'fuse_convmixer fuses the exact GELU only, got {act!r}: keep '
            'the unfused model for other activations.')


class FusedConvGELUBN(nn.Module):
    """``BN(GELU(conv(x)))`` in eval mode as one conv and one ``addcmul``.

    Args:
        conv (nn.Conv2d): A convolution with integer padding.
        act (nn.GELU): The exact GELU after it.
        bn (nn.BatchNorm2d): The eval-mode BN after the GELU.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        _gelu_or_raise(act)
        if isinstance(conv.padding, str):
            raise TypeError(
                f'{conv!r} uses padding={conv.padding!r}, which oneDNN '
                'cannot fuse: only odd kernels (integer padding) are fused.')
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else \
            weight.new_zeros(weight.shape[0])
        scale, shift = _bn_affine(bn)
        self.register_buffer('weight', weight.clone())
        self.register_buffer('bias', bias.clone())
        self.register_buffer('scale', scale.view(1, -1, 1, 1).clone())
        self.register_buffer('shift', shift.view(1, -1, 1, 1).clone())
        self.conv_args: Tuple[List[int], List[int], List[int], int] = (
            list(conv.padding), list(conv.stride), list(conv.dilation),
            conv.groups)
        self._packed: Dict[tuple, torch.Tensor] = {}

    def conv_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``GELU(conv(x))``, fused by oneDNN on CPU."""
        padding, stride, dilation, groups = self.conv_args
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if x.device.type == 'cpu' and torch.backends.mkldnn.is_available() \
                and x.dtype in (torch.float32, torch.bfloat16):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self._packed_weight(x), self.bias.to(x.dtype), padding,
                stride, dilation, groups, 'gelu', [], 'none')
        return nn.functional.gelu(
            nn.functional.conv2d(x, self.weight.to(x.dtype),
                                 self.bias.to(x.dtype), stride, padding,
                                 dilation, groups))

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's blocked layout, reordered once per shape.

        A plain weight is reordered on every call, a sizeable part of a
        1x1 conv's time at small batch sizes. The cache is keyed on the
        weight's storage and version, so ``load_state_dict`` and ``.to()``
        invalidate it.
        """
        key = (tuple(x.shape), x.dtype, self.weight.data_ptr(),
               self.weight._version)
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
        y = self.conv_gelu(x)
        return torch.addcmul(self.shift.to(y.dtype), y,
                             self.scale.to(y.dtype), out=y)


class FusedConvMixerBlock(nn.Module):
    """One eval-mode ConvMixer block in four memory passes.

    Args:
        block (nn.Sequential): ``Sequential(Residual(Sequential(dwconv,
            GELU, BN)), conv1x1, GELU, BN)`` of a ``ConvMixerMM``.
    """

    def __init__(self, block: nn.Sequential) -> None:
        super().__init__()
        residual, pwconv, act, bn = block
        dwconv, dwact, dwbn = residual.fn
        # The residual BN's shift reaches the 1x1 conv through the sum only,
        # so it becomes part of that conv's bias: W(x + s*h + t) + b
        # == W(x + s*h) + (W t + b).
        self.dw = FusedConvGELUBN(dwconv, dwact, dwbn)
        self.pw = FusedConvGELUBN(pwconv, act, bn)
        weight = self.pw.weight.flatten(1)
        self.pw.bias += weight @ self.dw.shift.flatten()
        self.dw.shift.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw.conv_gelu(x)
        x = torch.addcmul(x, h, self.dw.scale.to(h.dtype), out=h)
        return self.pw(x)


def _check_block(block: nn.Module) -> None:
    ok = (isinstance(block, nn.Sequential) and len(block) == 4
          and isinstance(block[0], Residual)
          and isinstance(block[0].drop_path, nn.Identity))
    if not ok:
        raise TypeError(
            'fuse_convmixer expects ConvMixerMM blocks without drop path in '
            f'eval mode, got {block!r}.')


@torch.no_grad()
def fuse_convmixer(model: nn.Module) -> nn.Module:
    """Fuse every ``ConvMixerMM`` in ``model`` for inference, in place.

    The model must be in eval mode: the fused blocks use BN's running
    statistics and cannot be trained. Outputs match the unfused model to
    float rounding (``tests/test_fast_paths.py`` checks fp32 to 1e-4
    relative). Works with contiguous and channels_last input; channels_last
    is faster on CPU.

    Args:
        model (nn.Module): A ``ConvMixerMM`` or any model containing one,
            e.g. an ``ImageClassifier``.

    Returns:
        nn.Module: ``model``, with its ConvMixer stems and blocks replaced.

    Example:
        >>> import torch
        >>> from convmixer_mm.models import ConvMixerMM, fuse_convmixer
        >>> arch = dict(embed_dims=16, depth=2, patch_size=4, kernel_size=3)
        >>> model = ConvMixerMM(arch=arch).eval()
        >>> x = torch.rand(1, 3, 32, 32)
        >>> ref = model(x)[0]
        >>> out = fuse_convmixer(model)(x)[0]
        >>> print(torch.allclose(out, ref, atol=1e-5))
        True
    """
    backbones = [m for m in model.modules() if isinstance(m, ConvMixerMM)]
    if not backbones:
        raise TypeError(
            f'No ConvMixerMM in {type(model).__name__}: fuse_convmixer only '
            'fuses convmixer_mm backbones (type="ConvMixerMM").')
    if model.training:
        raise RuntimeError(
            'fuse_convmixer needs an eval-mode model (call model.eval() '
            'first): fused blocks use BN running statistics.')
    for backbone in backbones:
        if isinstance(backbone.stem, FusedConvGELUBN):
            continue
        for block in backbone.stages:
            _check_block(block)
        backbone.stem = FusedConvGELUBN(*backbone.stem)
        backbone.stages = nn.Sequential(
            *[FusedConvMixerBlock(block) for block in backbone.stages])
        # The fused modules have no parameters to freeze or train.
        backbone.frozen_stages = 0
        backbone.freeze_stem = False
    # model.eval() keeps working; model.train() fails loudly.
    model.train = types.MethodType(_inference_only_train, model)
    return model


def _inference_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise RuntimeError(
            'A model fused by fuse_convmixer is inference-only: rebuild it '
            'from the config (or reload the checkpoint) to train.')
    return type(self).train(self, False)


@HOOKS.register_module()
class CompileModelHook(Hook):
    """``torch.compile`` submodules of the model in place before training.

    mmengine's ``compile=True`` compiles the whole ``train_step``, whose
    logging and optimizer code make dynamo recompile every iteration (on
    2 CPU cores the Fashion-MNIST config then trains at a third of eager
    speed). Compiling the network alone gives the fused kernels without
    that; ``nn.Module.compile`` keeps the state-dict keys. On CPU it needs
    a C++ compiler (without one it warns and leaves the model eager) and
    compiles for tens of seconds at start, cached across runs.

    Args:
        modules (Sequence[str]): Attribute names of the submodules to
            compile. Defaults to ``('backbone', )``.
        **kwargs: Arguments of ``torch.compile``.

    Example:
        >>> custom_hooks = [dict(type='CompileModelHook')]
    """
    priority = 'VERY_HIGH'

    def __init__(self,
                 modules: Sequence[str] = ('backbone', ),
                 **kwargs) -> None:
        self.modules = tuple(modules)
        self.kwargs = kwargs

    def before_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        if not self._can_compile(model):
            warnings.warn(
                'CompileModelHook: no C++ compiler (g++/c++) on PATH for '
                "torch.compile's CPU backend; training uncompiled. Install "
                'g++ to get the faster compiled model.')
            return
        for name in self.modules:
            module = getattr(model, name, None)
            if not isinstance(module, nn.Module):
                raise ValueError(
                    f'CompileModelHook: the model has no submodule '
                    f'{name!r}; set modules= to some of '
                    f'{[n for n, _ in model.named_children()]}.')
            module.compile(**self.kwargs)

    def _can_compile(self, model: nn.Module) -> bool:
        """Whether inductor can generate CPU code, when it has to."""
        backend = self.kwargs.get('backend', 'inductor')
        on_cpu = all(p.device.type == 'cpu' for p in model.parameters())
        if backend != 'inductor' or not on_cpu:
            return True
        return any(shutil.which(cxx) for cxx in ('g++', 'c++', 'clang++'))
