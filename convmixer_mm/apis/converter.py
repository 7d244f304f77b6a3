# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Convert ConvMixer checkpoints between the official, timm and our layouts.

The layouts hold the same tensors under other names (the one table is
``engine.checkpoint.LAYOUT_PREFIXES``). The architecture is read from the
tensor shapes. The activation is not in the weights: the released 768/32
weights need ReLU, all others GELU, so the result records it in its meta,
with the config to use.
"""
import os
import os.path as osp
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ..engine.checkpoint import (LAYOUTS, CheckpointError, StateDict,
                                 count_blocks, extract_state_dict,
                                 from_mm_layout, load_checkpoint_file,
                                 model_shapes, raise_mismatches, to_mm_layout)
from ..engine.config import load_config
from ..models import ConvMixerMM
from ..utils import atomic_save_bytes, refuse_overwrite
from ..version import __version__


def validate(state: StateDict) -> Dict[str, int]:
    """The architecture of an mmpretrain-layout ConvMixer state dict, read
    from its shapes; raise unless it is complete and consistent.

    Missing BN ``num_batches_tracked`` counters (older checkpoints) are
    added as zeros in place; they do not affect the outputs.
    """
    needed = ('backbone.stem.0.weight', 'backbone.stages.0.0.fn.0.weight',
              'head.fc.weight')
    if any(k not in state for k in needed):
        raise CheckpointError(
            f'The ConvMixer checkpoint lacks one of {list(needed)}, needed '
            'to read its architecture (a checkpoint without a classifier '
            'head is not supported).')
    stem, dw, fc = (state[k] for k in needed)
    if (stem.dim(), dw.dim(), fc.dim()) != (4, 4, 2):
        raise CheckpointError(
            f'Unexpected ConvMixer tensor shapes: stem conv {stem.shape}, '
            f'depthwise conv {dw.shape}, fc {fc.shape}.')
    arch = dict(
        embed_dims=stem.shape[0],
        depth=count_blocks(state, 'backbone.stages.{}.0.fn.0.weight'),
        kernel_size=dw.shape[-1],
        patch_size=stem.shape[-1],
        in_channels=stem.shape[1],
        num_classes=fc.shape[0])
    shapes = model_shapes(arch)
    for key, shape in shapes.items():
        if key.endswith('.num_batches_tracked') and key not in state:
            state[key] = torch.zeros(shape, dtype=torch.long)
    raise_mismatches(
        state, shapes,
        f'The checkpoint is not a consistent ConvMixer with {_describe(arch)}')
    return arch


def arch_from_config(cfg: Any) -> Tuple[Dict[str, int], Optional[str]]:
    """The arch values and the activation type of the ConvMixer classifier
    that a config (file or loaded) builds."""
    if isinstance(cfg, str):
        cfg = load_config(cfg)
    backbone = cfg.model.get('backbone', {})
    kind = str(backbone.get('type')).split('.')[-1]
    if kind not in ('ConvMixerMM', 'ConvMixer'):
        raise CheckpointError(
            f'The config builds a {kind} backbone, not a ConvMixer.')
    arch = ConvMixerMM.parse_arch(backbone.get('arch', '768/32'))
    arch['in_channels'] = backbone.get('in_channels', 3)
    if 'num_classes' in cfg.model.get('head', {}):
        arch['num_classes'] = cfg.model.head.num_classes
    return arch, backbone.get('act_cfg', dict(type='GELU'))['type']


def arch_name(arch: Mapping[str, int]) -> Optional[str]:
    """The ``ConvMixerMM.arch_settings`` name of ``arch``, if it has one."""
    return next((name for name, setting in ConvMixerMM.arch_settings.items()
                 if all(arch[k] == v for k, v in setting.items())), None)


def default_act(arch: Mapping[str, int]) -> str:
    """The activation of the released weights of ``arch``: the 768/32
    ones were trained with ReLU, all others with GELU."""
    return 'ReLU' if arch_name(arch) == '768/32' else 'GELU'


def suggested_config(arch: Mapping[str, int], act: str) -> Optional[str]:
    """Our ImageNet config that fits ``arch`` and ``act``, if any."""
    name = arch_name(arch)
    if name is None or (arch['num_classes'], arch['in_channels'],
                        act) != (1000, 3, default_act(arch)):
        return None
    name = name.replace('/', '-')
    return f'configs/convmixer/convmixer-{name}_10xb64_in1k.py'


def _describe(arch: Mapping[str, int]) -> str:
    return ', '.join(f'{k}={arch[k]}' for k in arch)


def convert_state_dict(checkpoint: Any,
                       arch: Union[str, Mapping[str, int], None] = None,
                       act: Optional[str] = None,
                       config: Any = None,
                       use_ema: bool = False) -> Tuple[StateDict, dict]:
    """Convert a loaded checkpoint of any layout to ours, in memory.

    ``arch`` and ``config``, if given, must fit the checkpoint. ``act``
    (``'relu'`` or ``'gelu'``) defaults to what a converted checkpoint's
    meta or the config says, else to the release's (ReLU for 768/32).

    Returns:
        tuple: The state dict and its meta: ``arch``, ``act_cfg``,
        ``config`` (ours that fits, or None), ``source_layout``,
        ``converter`` and, for 1000 classes, ``dataset_meta``.
    """
    state, layout = to_mm_layout(extract_state_dict(checkpoint, use_ema))
    detected = validate(state)
    if arch is not None:
        expected = ConvMixerMM.parse_arch(arch)
        diff = '; '.join(f'{k}: checkpoint {detected[k]} vs --arch {arch} {v}'
                         for k, v in expected.items() if detected[k] != v)
        if diff:
            raise CheckpointError(
                f'The checkpoint does not match --arch {arch}: {diff}. The '
                f'checkpoint is a ConvMixer with {_describe(detected)}.')
    old_meta = checkpoint.get('meta') if isinstance(checkpoint,
                                                    Mapping) else None
    old_meta = old_meta if isinstance(old_meta, Mapping) else {}
    cfg_act = None
    if config is not None:
        cfg_arch, cfg_act = arch_from_config(config)
        raise_mismatches(
            state, model_shapes({**detected, **cfg_arch}),
            'The checkpoint does not fit the config',
            f'The checkpoint is a ConvMixer with {_describe(detected)}.')
    if act is not None:
        act_type = dict(relu='ReLU', gelu='GELU').get(act.lower())
        if act_type is None:
            raise ValueError(f'Unknown activation {act!r}: use relu or gelu.')
    elif 'act_cfg' in old_meta:
        act_type = old_meta['act_cfg']['type']
    else:
        act_type = cfg_act or default_act(detected)
    if cfg_act is not None and cfg_act != act_type:
        raise CheckpointError(
            f'The config uses {cfg_act} but these weights need {act_type}: '
            f'set model.backbone.act_cfg=dict(type={act_type!r}) or, if the '
            f'weights really were trained with {cfg_act}, pass '
            f'--act {cfg_act.lower()}.')
    meta = dict(
        arch=detected,
        act_cfg=dict(type=act_type),
        config=suggested_config(detected, act_type),
        source_layout=layout,
        converter=f'convmixer_mm {__version__}')
    if 'dataset_meta' in old_meta:
        meta['dataset_meta'] = old_meta['dataset_meta']
    elif detected['num_classes'] == 1000:
        from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
        meta['dataset_meta'] = dict(classes=list(IMAGENET_CATEGORIES))
    return state, meta


def convert_checkpoint(src: str,
                       dst: str,
                       arch: Union[str, Mapping[str, int], None] = None,
                       act: Optional[str] = None,
                       config: Any = None,
                       to: str = 'mmpretrain',
                       use_ema: bool = False,
                       force: bool = False) -> dict:
    """Convert the checkpoint file ``src`` and write ``dst``; return its
    meta (see :func:`convert_state_dict`).

    ``to='mmpretrain'`` writes ``{'state_dict', 'meta'}`` for our configs;
    ``'timm'`` or ``'official'`` write the plain state dict of that layout.
    A failure leaves ``dst`` as it was.
    """
    if to not in LAYOUTS:
        raise ValueError(f'Unknown target layout {to!r}: choose one of '
                         f'{list(LAYOUTS)}.')
    if osp.isdir(dst):
        raise IsADirectoryError(f'{dst} is a directory: give a file name.')
    refuse_overwrite(dst, force)
    state, meta = convert_state_dict(
        load_checkpoint_file(src), arch, act, config, use_ema)
    meta['source_file'] = osp.basename(src)
    out = dict(state_dict=state, meta=meta) if to == 'mmpretrain' else \
        from_mm_layout(state, to)
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    atomic_save_bytes(dst, lambda tmp: torch.save(out, tmp))
    return meta


def describe_conversion(meta: Mapping) -> str:
    """What was found, and which config the weights need."""
    arch, act = meta['arch'], meta['act_cfg']['type']
    name = arch_name(arch)
    lines = [
        f'Detected a ConvMixer{"-" + name if name else ""} in the '
        f'{meta["source_layout"]} layout: {_describe(arch)}.',
        f'These weights need act_cfg=dict(type={act!r}).'
    ]
    if meta.get('config'):
        lines.append(f'Use the config {meta["config"]}.')
    else:
        dims = {k: arch[k] for k in ConvMixerMM.essential_keys}
        lines.append(
            "Use a config with model.backbone=dict(type='ConvMixerMM', "
            f'arch={dims}, in_channels={arch["in_channels"]}, '
            f'act_cfg=dict(type={act!r})) and '
            f'head.num_classes={arch["num_classes"]}.')
    return '\n'.join(lines)
