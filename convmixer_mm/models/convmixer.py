# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The ConvMixer backbone, trainable and checkpoint-compatible."""
import contextlib
import functools
import itertools
import warnings
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from torch.nn.modules.batchnorm import _BatchNorm

from mmpretrain.models.backbones.base_backbone import BaseBackbone
from mmpretrain.registry import MODELS
from .fused import (FusedConvActBN, FusedConvMixerBlock, fusion_problem,
                    run_fused, storage_key)
from .ops import DepthwiseConv2d
from .ops.act_bn import act_bn
from .ops.dwconv import block_kernel_applies


class Residual(nn.Module):
    """``x + drop_path(fn(x))``, nested as ``fn`` like the official code."""

    def __init__(self, fn: nn.Module, drop_path_rate: float = 0.) -> None:
        super().__init__()
        self.fn = fn
        self.drop_path = (
            DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.fn(x))


@contextlib.contextmanager
def _keep_bn_stats(module: nn.Module) -> Iterator[None]:
    """Freeze BN running statistics while a checkpoint recomputes.

    Recomputation runs BN forward a second time; without this the running
    mean and variance would take the momentum step twice per iteration.
    """
    saved = []
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


@MODELS.register_module()
class ConvMixerMM(BaseBackbone):
    """ConvMixer backbone.

    A trainable implementation of `Patches Are All You Need?
    <https://arxiv.org/abs/2201.09792>`_, following the `official code
    <https://github.com/locuslab/convmixer>`_ layer for layer, so that
    official, timm and mmpretrain checkpoints map by prefix.

    Args:
        arch (str | dict): One of ``'768/32'``, ``'1024/20'``, ``'1536/20'``,
            or a dict with the keys ``embed_dims``, ``depth``,
            ``patch_size`` and ``kernel_size``. Defaults to ``'768/32'``.
        in_channels (int): Number of input image channels. Defaults to 3.
        norm_cfg (dict): Config of the norm layers.
            Defaults to ``dict(type='BN')``.
        act_cfg (dict): Config of the activation after every conv. The
            released 768/32 weights need ``dict(type='ReLU')``.
            Defaults to ``dict(type='GELU')``.
        out_indices (int | Sequence[int]): Blocks whose outputs are
            returned; negative values count from the end. Defaults to -1.
        frozen_stages (int): Freeze (``eval()`` and no gradients) the
            first ``k`` blocks, ``stages[0..k-1]``, as mmpretrain's
            ``ConvMixer`` does: 0 freezes nothing. Defaults to 0.
        freeze_stem (bool): Freeze the patch embedding (``stem``) too,
            which ``frozen_stages`` never does. Defaults to False.
        drop_path_rate (float): Stochastic depth rate of the residual
            branches, rising linearly with depth. Defaults to 0.
        with_cp (bool): Checkpoint each block to save memory (same outputs,
            gradients and BN statistics). Defaults to False.
        fast_dwconv (bool): Run the depthwise convs with the C kernel of
            :class:`~convmixer_mm.models.ops.DepthwiseConv2d` where it
            applies (fp32/fp64 on CPU). Defaults to True.
        fuse_train (bool): In training mode, run each act + BN (+ residual
            sum) as one op (:func:`~convmixer_mm.models.ops.act_bn.act_bn`).
            Defaults to True.
        fuse_eval (bool): In eval mode without gradients, run fused copies
            of the layers (:mod:`convmixer_mm.models.fused`), rebuilt
            whenever a weight or BN statistic changes. Defaults to True.
            All three give the modules' results to float rounding and leave
            the state dict unchanged; layers they do not cover run as usual.
        init_cfg (dict | list[dict], optional): Defaults to None,
            PyTorch's default init as in the official code.

    Example:
        >>> import torch
        >>> from convmixer_mm.models import ConvMixerMM
        >>> arch = dict(embed_dims=16, depth=2, patch_size=4, kernel_size=3)
        >>> model = ConvMixerMM(arch=arch, out_indices=(0, 1)).eval()
        >>> for out in model(torch.rand(1, 3, 32, 32)):
        ...     print(tuple(out.shape))
        (1, 16, 8, 8)
        (1, 16, 8, 8)
    """
    arch_settings: Dict[str, Dict[str, int]] = {
        '768/32': dict(embed_dims=768, depth=32, patch_size=7, kernel_size=7),
        '1024/20': dict(
            embed_dims=1024, depth=20, patch_size=14, kernel_size=9),
        '1536/20': dict(
            embed_dims=1536, depth=20, patch_size=7, kernel_size=9),
    }
    essential_keys = ('embed_dims', 'depth', 'patch_size', 'kernel_size')

    def __init__(self,
                 arch: Union[str, dict] = '768/32',
                 in_channels: int = 3,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='GELU'),
                 out_indices: Union[int, Sequence[int]] = -1,
                 frozen_stages: int = 0,
                 freeze_stem: bool = False,
                 drop_path_rate: float = 0.,
                 with_cp: bool = False,
                 fast_dwconv: bool = True,
                 fuse_train: bool = True,
                 fuse_eval: bool = True,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        arch = self.parse_arch(arch)
        self.embed_dims = arch['embed_dims']
        self.depth = arch['depth']
        self.patch_size = arch['patch_size']
        self.kernel_size = arch['kernel_size']
        self.in_channels = in_channels
        self.out_indices = self._parse_out_indices(out_indices, self.depth)
        if not 0 <= frozen_stages <= self.depth:
            raise ValueError(
                f'frozen_stages={frozen_stages} is out of range: use 0 '
                f'(none) to {self.depth} (that many blocks); freeze the '
                'stem with freeze_stem=True.')
        self.frozen_stages = frozen_stages
        self.freeze_stem = freeze_stem
        self.with_cp = with_cp
        self.fuse_train = fuse_train
        self.fuse_eval = fuse_eval
        self._warned = set()

        dims = self.embed_dims
        self.stem = nn.Sequential(
            nn.Conv2d(
                in_channels, dims, self.patch_size, stride=self.patch_size),
            build_activation_layer(act_cfg),
            build_norm_layer(norm_cfg, dims)[1])
        dpr = torch.linspace(
            0, drop_path_rate, self.depth, device='cpu').tolist()
        self.stages = nn.Sequential(*[
            nn.Sequential(
                Residual(
                    nn.Sequential(
                        DepthwiseConv2d(
                            dims, self.kernel_size, fast=fast_dwconv),
                        build_activation_layer(act_cfg),
                        build_norm_layer(norm_cfg, dims)[1]), dpr[i]),
                nn.Conv2d(dims, dims, kernel_size=1),
                build_activation_layer(act_cfg),
                build_norm_layer(norm_cfg, dims)[1])
            for i in range(self.depth)
        ])
        self._freeze_stages()

    @classmethod
    def parse_arch(cls, arch: Union[str, dict]) -> Dict[str, int]:
        """The one arch parser: a name, ``'DIM/DEPTH/KERNEL/PATCH'`` or a
        dict with the essential keys, checked, as a new dict."""
        if isinstance(arch, str):
            parts = arch.split('/')
            if len(parts) == 4 and all(p.isdigit() for p in parts):
                arch = dict(
                    zip(('embed_dims', 'depth', 'kernel_size', 'patch_size'),
                        map(int, parts)))
            elif arch not in cls.arch_settings:
                raise ValueError(
                    f'Unknown ConvMixer arch {arch!r}: choose one of '
                    f'{sorted(cls.arch_settings)}, DIM/DEPTH/KERNEL/PATCH '
                    '(e.g. 256/8/9/7) or pass a dict with keys '
                    f'{list(cls.essential_keys)}.')
            else:
                return dict(cls.arch_settings[arch])
        if not isinstance(arch, dict):
            raise TypeError(
                f'arch must be a str or a dict, got {type(arch).__name__}.')
        missing = [k for k in cls.essential_keys if k not in arch]
        if missing:
            raise ValueError(
                f'The ConvMixer arch dict is missing {missing}: it needs all '
                f'of {list(cls.essential_keys)}.')
        unknown = sorted(set(arch) - set(cls.essential_keys))
        if unknown:
            raise ValueError(
                f'The ConvMixer arch dict has unknown keys {unknown}: use '
                f'only {list(cls.essential_keys)}.')
        for key in cls.essential_keys:
            if not isinstance(arch[key], int) or arch[key] <= 0:
                raise ValueError(
                    f'arch[{key!r}] must be a positive int, got '
                    f'{arch[key]!r}.')
        return {k: arch[k] for k in cls.essential_keys}

    @staticmethod
    def _parse_out_indices(out_indices: Union[int, Sequence[int]],
                           depth: int) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        if not isinstance(out_indices, Sequence):
            raise TypeError('out_indices must be an int or a sequence of '
                            f'ints, got {type(out_indices).__name__}.')
        parsed = []
        for index in out_indices:
            if not -depth <= index < depth:
                raise ValueError(
                    f'out_indices {index} is out of range for depth {depth}: '
                    f'use values in [{-depth}, {depth - 1}].')
            parsed.append(index % depth)
        return tuple(parsed)

    def _freeze_stages(self) -> None:
        frozen = list(self.stages[:self.frozen_stages])
        if self.freeze_stem:
            frozen.append(self.stem)
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'ConvMixerMM':
        super().train(mode)
        self._freeze_stages()
        return self

    def _block(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``stage(x)``, with each act + BN (+ residual sum) as one op in
        training mode (``fuse_train``; see :func:`act_bn`)."""
        if not (self.fuse_train and self.training):
            return stage(x)
        residual, conv, act, norm = stage
        dwconv, dw_act, dw_norm = residual.fn
        if isinstance(residual.drop_path, nn.Identity):
            x = act_bn(dwconv(x), dw_act, dw_norm, residual=x)
        else:
            x = x + residual.drop_path(act_bn(dwconv(x), dw_act, dw_norm))
        return act_bn(conv(x), act, norm)

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        block = functools.partial(self._block, stage)
        if not (self.with_cp and torch.is_grad_enabled()):
            return block(x)
        if torch.compiler.is_compiling():
            # dynamo traces no context_fn, and its recomputation in the
            # backward graph does not replay the BN statistics updates.
            return cp.checkpoint(block, x, use_reentrant=False)
        return cp.checkpoint(
            block,
            x,
            use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(),
                                _keep_bn_stats(stage)))

    def _check_size(self, size: Sequence[int]) -> None:
        """Refuse an input smaller than a patch. Taps of a kernel wider
        than ``2 * grid - 1`` read only zero padding: legal but slow (a
        warning, once per grid); one that reaches more than twice across
        the grid (``kernel_size // 2 > 2 * grid``) is plainly a mistake."""
        if min(size) < self.patch_size:
            raise ValueError(
                f'patch_size={self.patch_size} is larger than the input '
                f'image {tuple(size)}: use a smaller patch_size or resize '
                'the images in the pipeline.')
        grid = min(s // self.patch_size for s in size)
        useful = 2 * grid - 1
        if self.kernel_size <= useful or grid in self._warned:
            return
        message = (f'kernel_size={self.kernel_size} on the {grid}x{grid} '
                   f'token grid of a {tuple(size)} input: taps beyond '
                   f'{useful}x{useful} read only zero padding and slow the '
                   f'model down. Use kernel_size <= {useful}.')
        if self.kernel_size // 2 > 2 * grid:
            raise ValueError(message)
        self._warned.add(grid)
        warnings.warn(message)

    def _fused_layers(self) -> Optional[Tuple[nn.Module, list]]:
        """Fused copies of the stem and blocks when ``fuse_eval`` applies,
        else None.

        The copies are cached with the storage and version of every
        parameter and buffer, so an optimizer step, ``load_state_dict``,
        ``.to()`` or a BN update in train mode all rebuild them. Exports and
        compilation trace the plain modules. A backbone that
        ``fuse_convmixer`` fused for good returns its own modules, so that
        it takes the C block kernel too.
        """
        if self.training or torch.is_grad_enabled() \
                or torch.compiler.is_compiling() \
                or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            return None
        if isinstance(self.stem, FusedConvActBN):
            return self.stem, list(self.stages)
        if not self.fuse_eval:
            return None
        key = tuple(storage_key(t) for t in
                    itertools.chain(self.parameters(), self.buffers()))
        cached = self.__dict__.get('_fused')
        if cached is None or cached[0] != key:
            triples = [self.stem] + [b[0].fn for b in self.stages] + \
                [b[1:] for b in self.stages]
            if any(fusion_problem(*t) for t in triples):
                return None
            cached = (key, FusedConvActBN(*self.stem),
                      [FusedConvMixerBlock(b) for b in self.stages])
            self.__dict__['_fused'] = cached
        return cached[1], cached[2]

    def __getstate__(self) -> dict:
        # The fused copies are a cache, rebuilt on use (and their oneDNN
        # weights cannot be pickled).
        state = dict(super().__getstate__())
        state.pop('_fused', None)
        return state

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'ConvMixerMM expects input of shape (B, {self.in_channels}, '
                f'H, W), got {tuple(x.shape)}: set in_channels in the '
                'backbone config to match the images (e.g. 1 for grayscale).')
        self._check_size(x.shape[-2:])
        fused = self._fused_layers()
        if fused is not None and block_kernel_applies(x):
            return run_fused(*fused, x, self.out_indices)
        stem, stages = fused or (self.stem, self.stages)
        if self.fuse_train and self.training:
            x = act_bn(stem[0](x), stem[1], stem[2])
        else:
            x = stem(x)
        outs = []
        for i, stage in enumerate(stages):
            x = self._run_stage(stage, x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
