# Copyright (c) convmixer_mm contributors. All rights reserved.
"""In-place inference fusion, for an inference-only model.

The backbone's ``fuse_eval`` (default) runs the same fused layers of
:mod:`.fused` without replacing any module.
"""
import types

import torch
import torch.nn as nn

from .convmixer import ConvMixerMM, Residual
from .fused import FusedConvActBN, FusedConvMixerBlock


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
    """Fuse every ``ConvMixerMM`` in the eval-mode ``model`` (a backbone
    or e.g. an ``ImageClassifier``) for inference, in place; returns it.

    The fused blocks use BN's running statistics and cannot be trained.
    Outputs match the unfused model to float rounding.

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
        if isinstance(backbone.stem, FusedConvActBN):
            continue
        for block in backbone.stages:
            _check_block(block)
        backbone.stem = FusedConvActBN(*backbone.stem)
        backbone.stages = nn.Sequential(
            *[FusedConvMixerBlock(block) for block in backbone.stages])
        # The fused modules have no parameters to freeze or train, and are
        # already what fuse_eval would run.
        backbone.frozen_stages = 0
        backbone.freeze_stem = False
        backbone.fuse_eval = False
    # model.eval() keeps working; model.train() fails loudly.
    model.train = types.MethodType(_inference_only_train, model)
    return model


def _inference_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise RuntimeError(
            'A model fused by fuse_convmixer is inference-only: rebuild it '
            'from the config (or reload the checkpoint) to train.')
    return type(self).train(self, False)
