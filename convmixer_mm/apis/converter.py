# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Convert ConvMixer checkpoints between the official, timm and our layouts.

Three layouts are in use, all with the same tensors under different names:

- ``official``: the ``nn.Sequential`` of locuslab/convmixer: ``0`` stem
  conv, ``1`` act, ``2`` stem BN, ``3 .. depth+2`` blocks, ``depth+3`` pool,
  ``depth+4`` flatten, ``depth+5`` linear;
- ``timm``: ``stem.*``, ``blocks.*``, ``head.*``;
- ``mmpretrain``: ``backbone.stem.*``, ``backbone.stages.*``, ``head.fc.*``,
  shared by mmpretrain's built-in ``ConvMixer`` and our ``ConvMixerMM``.

The architecture is read from the tensor shapes. The activation is not in
the weights: the released 768/32 weights need ReLU, all others GELU, so
the result records the activation (and the config to use) in its meta.
"""
import os
import os.path as osp
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ..engine.checkpoint import (LAYOUTS, CheckpointError, StateDict,
                                 count_blocks, extract_state_dict,
                                 from_mm_layout, load_checkpoint_file,
                                 model_shapes, raise_mismatches, to_mm_layout)
from ..models import ConvMixerMM
from ..utils import atomic_save_bytes, refuse_overwrite
from ..version import __version__

# The released 768/32 weights were trained with ReLU, all others with GELU.
RELU_ARCH = ConvMixerMM.arch_settings['768/32']


def validate(state: StateDict) -> Dict[str, int]:
    """Check that an mmpretrain-layout state dict is a complete, consistent
    ConvMixer and return its architecture, read from the tensor shapes:
    ``embed_dims``, ``depth``, ``kernel_size``, ``patch_size``,
    ``in_channels`` and ``num_classes``.

    BN ``num_batches_tracked`` counters that older checkpoints lack are
    added (as zeros) in place; they do not affect the outputs.
    """
    needed = ('backbone.stem.0.weight', 'backbone.stages.0.0.fn.0.weight',
              'head.fc.weight')
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(
            f'The ConvMixer checkpoint lacks {missing}, needed to read its '
            'architecture (a checkpoint without a classifier head is not '
            'supported).')
    stem, dw, fc = (state[k] for k in needed)
    if (stem.dim(), dw.dim(), fc.dim()) != (4, 4, 2):
        raise CheckpointError(
            'Unexpected ConvMixer tensor ranks: stem conv '
            f'{tuple(stem.shape)}, depthwise conv {tuple(dw.shape)}, fc '
            f'{tuple(fc.shape)}.')
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
    """The architecture values and the activation type (``'ReLU'``,
    ``'GELU'``, ...) of the ConvMixer classifier a config (file or loaded)
    builds."""
    from mmengine.config import Config
    if isinstance(cfg, str):
        cfg = Config.fromfile(cfg)
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
    """The activation the released weights of ``arch`` were trained with."""
    relu = all(arch[k] == v for k, v in RELU_ARCH.items())
    return 'ReLU' if relu else 'GELU'


def suggested_config(arch: Mapping[str, int], act: str) -> Optional[str]:
    """Our config for ``arch`` (relative to the repo root), when one
    matches the architecture, 1000 classes and the activation."""
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

    Args:
        checkpoint (Any): A loaded checkpoint (see
            :func:`extract_state_dict`).
        arch (str | Mapping, optional): The architecture the checkpoint
            must have (see ``ConvMixerMM.parse_arch``). Defaults to None.
        act (str, optional): ``'relu'`` or ``'gelu'``, the activation the
            weights need. Defaults to None: ReLU for 768/32, GELU for
            others (the official release), or what a converted
            checkpoint's meta or ``config`` says.
        config (str | Config, optional): A config the checkpoint must fit.
            Defaults to None.
        use_ema (bool): Convert the EMA weights. Defaults to False.

    Returns:
        tuple: The state dict in the mmpretrain layout and its meta:
        ``arch``, ``act_cfg``, ``config`` (the one to use, if ours has
        one), ``source_layout``, ``converter`` and, for 1000 classes,
        ImageNet's ``dataset_meta``.
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
    """Convert the ConvMixer checkpoint file ``src`` and write ``dst``.

    Args:
        src (str): A checkpoint in any layout (see the module docstring).
        dst (str): Where to write. An existing file is kept unless
            ``force``.
        arch, act, config, use_ema: See :func:`convert_state_dict`.
        to (str): ``'mmpretrain'`` writes ``{'state_dict', 'meta'}`` for
            our configs; ``'timm'`` or ``'official'`` write the plain state
            dict of that layout. Defaults to ``'mmpretrain'``.
        force (bool): Overwrite ``dst``. Defaults to False.

    Returns:
        dict: The meta (see :func:`convert_state_dict`).
    """
    if to not in LAYOUTS:
        raise ValueError(f'Unknown target layout {to!r}: choose one of '
                         f'{list(LAYOUTS)}.')
    refuse_overwrite(dst, force)
    checkpoint = load_checkpoint_file(src)
    state, meta = convert_state_dict(checkpoint, arch, act, config, use_ema)
    meta['source_file'] = osp.basename(src)
    out = dict(state_dict=state, meta=meta) if to == 'mmpretrain' else \
        from_mm_layout(state, to)
    if osp.isdir(dst):
        raise IsADirectoryError(f'{dst} is a directory: give a file name.')
    refuse_overwrite(dst, force)
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    atomic_save_bytes(dst, lambda tmp: torch.save(out, tmp))
    return meta


def describe_conversion(meta: Mapping) -> str:
    """A human summary: what was found and which config the weights need."""
    arch = meta['arch']
    name = arch_name(arch)
    act = meta['act_cfg']['type']
    lines = [
        f'Detected a ConvMixer{"-" + name if name else ""} in the '
        f'{meta["source_layout"]} layout: {_describe(arch)}.',
        f'These weights need act_cfg=dict(type={act!r}).'
    ]
    if meta.get('config'):
        lines.append(f'Use the config {meta["config"]}.')
    else:
        lines.append(
            'Use a config with model.backbone=dict(type=\'ConvMixerMM\', '
            f'arch=dict(embed_dims={arch["embed_dims"]}, '
            f'depth={arch["depth"]}, patch_size={arch["patch_size"]}, '
            f'kernel_size={arch["kernel_size"]}), '
            f'in_channels={arch["in_channels"]}, '
            f'act_cfg=dict(type={act!r})) and '
            f'head.num_classes={arch["num_classes"]}.')
    return '\n'.join(lines)
