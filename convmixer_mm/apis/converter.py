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
import argparse
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ..engine.checkpoint import CheckpointError, load_checkpoint_file
from ..models import ConvMixerMM
from ..utils import atomic_save_bytes
from ..version import __version__

LAYOUTS = ('official', 'timm', 'mmpretrain')
WRAPPER_KEYS = ('state_dict', 'model', 'state_dict_ema')
ARCH_KEYS = ('embed_dims', 'depth', 'kernel_size', 'patch_size')
BN_KEYS = ('weight', 'bias', 'running_mean', 'running_var')
# The released 768/32 weights were trained with ReLU, all others with GELU.
RELU_ARCH = ConvMixerMM.arch_settings['768/32']
CONFIG_DIR = 'configs/convmixer'

StateDict = Dict[str, torch.Tensor]


def load_any_checkpoint(path: str) -> Any:
    """Load a ``.pth``/``.pth.tar``/``.safetensors`` file onto the CPU.

    PyTorch files go through :func:`load_checkpoint_file`
    (``weights_only=True``) with ``argparse.Namespace`` also allowed, as
    timm's training script, which wrote the official release, stores its
    arguments in the checkpoint.

    Args:
        path (str): The checkpoint file.

    Returns:
        Any: The loaded object, usually a dict.
    """
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint {path!r} does not exist.')
    if not path.endswith('.safetensors'):
        with open(path, 'rb') as f:
            magic = f.read(4)
        # torch.save writes a zip archive, or a pickle (b'\x80') in the
        # legacy format.
        if magic != b'PK\x03\x04' and magic[:1] != b'\x80':
            raise CheckpointError(
                f'{path} is not a PyTorch checkpoint: torch.save writes a '
                'zip archive or a pickle, and this file is neither.')
        with torch.serialization.safe_globals([argparse.Namespace]):
            return load_checkpoint_file(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path)
    except SafetensorError as err:
        raise CheckpointError(
            f'{path} is not a safetensors checkpoint: {err}') from err


def extract_state_dict(checkpoint: Any, use_ema: bool = False) -> StateDict:
    """Unwrap a checkpoint to a flat state dict without a ``module.``
    prefix.

    Args:
        checkpoint (Any): A loaded checkpoint: a state dict, or a dict
            holding one under ``state_dict``, ``model`` or
            ``state_dict_ema``.
        use_ema (bool): Take ``state_dict_ema`` (timm's EMA weights)
            rather than the first of ``state_dict`` and ``model``.
            Defaults to False.

    Returns:
        dict[str, Tensor]: The tensors, in file order.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            'A checkpoint must be a dict of tensors or a dict wrapping one, '
            f'got {type(checkpoint).__name__}.')
    keys = ('state_dict_ema', ) if use_ema else WRAPPER_KEYS
    state = next((checkpoint[k]
                  for k in keys if isinstance(checkpoint.get(k), Mapping)),
                 None)
    if state is None:
        if use_ema:
            raise CheckpointError(
                'use_ema was requested but the checkpoint has no '
                f'state_dict_ema; its top-level keys: {_sample(checkpoint)}.')
        state = checkpoint
    if not state or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            'The checkpoint holds no state dict of tensors (looked under '
            f'{list(keys)} and at the top level, which has keys '
            f'{_sample(checkpoint)}).')
    if all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    return OrderedDict(state)


def _sample(mapping: Mapping, n: int = 6) -> str:
    keys = list(mapping)
    more = f', ... ({len(keys)} in all)' if len(keys) > n else ''
    return ', '.join(map(str, keys[:n])) + more


def detect_layout(state: StateDict) -> str:
    """Name the layout of a ConvMixer state dict.

    Returns:
        str: One of ``'official'``, ``'timm'`` and ``'mmpretrain'``.
    """
    if 'backbone.stem.0.weight' in state:
        return 'mmpretrain'
    if 'stem.0.weight' in state and 'blocks.0.0.fn.0.weight' in state:
        return 'timm'
    if '0.weight' in state and '3.0.fn.0.weight' in state:
        return 'official'
    raise CheckpointError(
        'This is not a ConvMixer checkpoint: it has neither the official '
        '(0.*, 3.0.fn.*), the timm (stem.*, blocks.*) nor the mmpretrain '
        f'(backbone.stem.*, backbone.stages.*) keys. Its keys: '
        f'{_sample(state)}.')


def _official_depth(state: StateDict) -> int:
    depth = 0
    while f'{depth + 3}.0.fn.0.weight' in state:
        depth += 1
    return depth


def _rename(state: StateDict, rules: Tuple[Tuple[str, str], ...],
            layout: str) -> StateDict:
    renamed = OrderedDict()
    unknown = []
    for key, value in state.items():
        for pattern, repl in rules:
            new_key, hits = re.subn(pattern, repl, key)
            if hits:
                renamed[new_key] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f'Keys that a ConvMixer in the {layout} layout does not have: '
            f'{unknown[:8]}' + (' ...' if len(unknown) > 8 else '') +
            '. Is this a checkpoint of another model?')
    return renamed


def _official_rules(depth: int, to_mm: bool) -> Tuple[Tuple[str, str], ...]:
    pairs = [('0.', 'backbone.stem.0.'), ('2.', 'backbone.stem.2.'),
             (f'{depth + 5}.', 'head.fc.')]
    pairs += [(f'{i + 3}.', f'backbone.stages.{i}.') for i in range(depth)]
    if not to_mm:
        pairs = [(mm, off) for off, mm in pairs]
    return tuple((f'^{re.escape(src)}', dst) for src, dst in pairs)


_TIMM_PAIRS = (('stem.', 'backbone.stem.'), ('blocks.', 'backbone.stages.'),
               ('head.', 'head.fc.'))


def _timm_rules(to_mm: bool) -> Tuple[Tuple[str, str], ...]:
    pairs = _TIMM_PAIRS if to_mm else [(mm, t) for t, mm in _TIMM_PAIRS]
    return tuple((f'^{re.escape(src)}', dst) for src, dst in pairs)


def to_mm_layout(state: StateDict) -> Tuple[StateDict, str]:
    """Rename any ConvMixer state dict to the mmpretrain layout.

    Returns:
        tuple: The renamed state dict and the detected source layout.
    """
    layout = detect_layout(state)
    if layout == 'official':
        rules = _official_rules(_official_depth(state), to_mm=True)
    elif layout == 'timm':
        rules = _timm_rules(to_mm=True)
    else:
        rules = ((r'^(backbone\.(stem|stages)\.|head\.fc\.)', r'\1'), )
    return _rename(state, rules, layout), layout


def from_mm_layout(state: StateDict, layout: str) -> StateDict:
    """Rename an mmpretrain-layout state dict to ``layout``.

    Args:
        state (dict[str, Tensor]): A state dict in the mmpretrain layout.
        layout (str): ``'official'``, ``'timm'`` or ``'mmpretrain'``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'Unknown layout {layout!r}: choose one of '
                         f'{list(LAYOUTS)}.')
    if layout == 'mmpretrain':
        return OrderedDict(state)
    if layout == 'timm':
        return _rename(state, _timm_rules(to_mm=False), 'mmpretrain')
    depth = infer_arch(state)['depth']
    return _rename(state, _official_rules(depth, to_mm=False), 'mmpretrain')


def infer_arch(state: StateDict) -> Dict[str, int]:
    """Read the architecture from the shapes of an mmpretrain-layout state
    dict.

    Returns:
        dict[str, int]: ``embed_dims``, ``depth``, ``kernel_size``,
        ``patch_size``, ``in_channels`` and ``num_classes``.
    """
    needed = ('backbone.stem.0.weight', 'backbone.stages.0.0.fn.0.weight',
              'head.fc.weight')
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(
            f'The ConvMixer checkpoint lacks {missing}, needed to read its '
            'architecture (a checkpoint without a classifier head is not '
            'supported).')
    stem = state['backbone.stem.0.weight']
    dw = state['backbone.stages.0.0.fn.0.weight']
    fc = state['head.fc.weight']
    if stem.dim() != 4 or dw.dim() != 4 or fc.dim() != 2:
        raise CheckpointError(
            'Unexpected ConvMixer tensor ranks: stem conv '
            f'{tuple(stem.shape)}, depthwise conv {tuple(dw.shape)}, fc '
            f'{tuple(fc.shape)}.')
    depth = 0
    while f'backbone.stages.{depth}.0.fn.0.weight' in state:
        depth += 1
    return dict(
        embed_dims=stem.shape[0],
        depth=depth,
        kernel_size=dw.shape[-1],
        patch_size=stem.shape[-1],
        in_channels=stem.shape[1],
        num_classes=fc.shape[0])


def expected_shapes(arch: Mapping[str, int]) -> Dict[str, Tuple[int, ...]]:
    """Every key and shape of an mmpretrain-layout ConvMixer classifier.

    Args:
        arch (Mapping[str, int]): The dict returned by :func:`infer_arch`.
    """
    dims, k, p = arch['embed_dims'], arch['kernel_size'], arch['patch_size']
    shapes: Dict[str, Tuple[int, ...]] = {}

    def conv(prefix: str, shape: Tuple[int, ...]) -> None:
        shapes[f'{prefix}.weight'] = shape
        shapes[f'{prefix}.bias'] = (dims, )

    def norm(prefix: str) -> None:
        shapes.update({f'{prefix}.{key}': (dims, ) for key in BN_KEYS})
        shapes[f'{prefix}.num_batches_tracked'] = ()

    conv('backbone.stem.0', (dims, arch['in_channels'], p, p))
    norm('backbone.stem.2')
    for i in range(arch['depth']):
        stage = f'backbone.stages.{i}'
        conv(f'{stage}.0.fn.0', (dims, 1, k, k))
        norm(f'{stage}.0.fn.2')
        conv(f'{stage}.1', (dims, dims, 1, 1))
        norm(f'{stage}.3')
    shapes['head.fc.weight'] = (arch['num_classes'], dims)
    shapes['head.fc.bias'] = (arch['num_classes'], )
    return shapes


def shape_mismatches(state: StateDict,
                     shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, str]:
    """Compare a state dict with the expected keys and shapes.

    Returns:
        dict[str, str]: For each bad key, what is wrong with it (missing,
        unexpected, or ``checkpoint (a, b) vs model (c, d)``).
    """
    problems = {}
    for key, shape in shapes.items():
        if key not in state:
            problems[key] = 'missing from the checkpoint'
        elif tuple(state[key].shape) != tuple(shape):
            problems[key] = (f'checkpoint {tuple(state[key].shape)} vs model '
                             f'{tuple(shape)}')
    for key in state:
        if key not in shapes:
            problems[key] = 'not in the model'
    return problems


def format_mismatches(problems: Mapping[str, str], limit: int = 10) -> str:
    """One line per mismatched key, at most ``limit`` of them."""
    lines = [f'  {key}: {why}' for key, why in list(problems.items())[:limit]]
    if len(problems) > limit:
        lines.append(f'  ... and {len(problems) - limit} more')
    return '\n'.join(lines)


def validate(state: StateDict) -> Dict[str, int]:
    """Check an mmpretrain-layout state dict is a complete, consistent
    ConvMixer and return its architecture.

    BN ``num_batches_tracked`` counters that older checkpoints lack are
    added (as zeros) in place; they do not affect the outputs.
    """
    arch = infer_arch(state)
    shapes = expected_shapes(arch)
    for key, shape in shapes.items():
        if key.endswith('.num_batches_tracked') and key not in state:
            state[key] = torch.zeros(shape, dtype=torch.long)
    problems = shape_mismatches(state, shapes)
    if problems:
        raise CheckpointError(
            'The checkpoint is not a consistent ConvMixer with '
            f'{_describe(arch)}:\n{format_mismatches(problems)}')
    return arch


def parse_arch(spec: Union[str, Mapping[str, int]]) -> Dict[str, int]:
    """Parse an ``--arch`` value.

    Args:
        spec (str | Mapping): A name of ``ConvMixerMM.arch_settings``
            (``'1536/20'``), ``'DIM/DEPTH/KERNEL/PATCH'`` (``'256/8/9/7'``)
            or a dict with some of ``embed_dims``, ``depth``,
            ``kernel_size``, ``patch_size``, ``in_channels`` and
            ``num_classes``.

    Returns:
        dict[str, int]: The requested architecture values.
    """
    if isinstance(spec, Mapping):
        return dict(spec)
    if spec in ConvMixerMM.arch_settings:
        return dict(ConvMixerMM.arch_settings[spec])
    parts = spec.split('/')
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return dict(zip(ARCH_KEYS, map(int, parts), strict=True))
    raise ValueError(
        f'Unknown arch {spec!r}: use one of '
        f'{sorted(ConvMixerMM.arch_settings)} or DIM/DEPTH/KERNEL/PATCH '
        '(e.g. 256/8/9/7).')


def check_arch(arch: Mapping[str, int], expected: Mapping[str, int],
               source: str) -> None:
    """Raise a :class:`CheckpointError` naming every value of ``expected``
    that the detected ``arch`` does not match."""
    diff = [
        f'{key}: checkpoint {arch[key]} vs {source} {value}'
        for key, value in expected.items()
        if key in arch and arch[key] != value
    ]
    if diff:
        raise CheckpointError(
            f'The checkpoint does not match {source}: ' + '; '.join(diff) +
            f'. The checkpoint is a ConvMixer with {_describe(arch)}.')


def arch_from_config(cfg: Any) -> Tuple[Dict[str, int], Optional[str]]:
    """Read the architecture and activation an mmpretrain config builds.

    Args:
        cfg (str | Config): A config file or a loaded config whose
            ``model`` is an ``ImageClassifier`` with a ConvMixer backbone.

    Returns:
        tuple: The architecture values it sets and the activation type
        (``'ReLU'``, ``'GELU'``, ...).
    """
    from mmengine.config import Config
    if isinstance(cfg, str):
        cfg = Config.fromfile(cfg)
    backbone = cfg.model.get('backbone', {})
    kind = str(backbone.get('type')).split('.')[-1]
    if kind not in ('ConvMixerMM', 'ConvMixer'):
        raise CheckpointError(
            f'The config builds a {kind} backbone, not a ConvMixer.')
    arch = parse_arch(backbone.get('arch', '768/32'))
    arch['in_channels'] = backbone.get('in_channels', 3)
    if 'num_classes' in cfg.model.get('head', {}):
        arch['num_classes'] = cfg.model.head.num_classes
    act = backbone.get('act_cfg', dict(type='GELU'))['type']
    return arch, act


def arch_name(arch: Mapping[str, int]) -> Optional[str]:
    """The ``ConvMixerMM.arch_settings`` name of ``arch``, if it has one."""
    for name, setting in ConvMixerMM.arch_settings.items():
        if all(arch[k] == v for k, v in setting.items()):
            return name
    return None


def default_act(arch: Mapping[str, int]) -> str:
    """The activation the released weights of ``arch`` were trained with."""
    relu = all(arch[k] == v for k, v in RELU_ARCH.items())
    return 'ReLU' if relu else 'GELU'


def suggested_config(arch: Mapping[str, int], act: str) -> Optional[str]:
    """Our config for ``arch`` (relative to the repo root), when one
    matches the architecture, 1000 classes and the activation."""
    name = arch_name(arch)
    if name is None or arch['num_classes'] != 1000 \
            or arch['in_channels'] != 3 or act != default_act(arch):
        return None
    return f'{CONFIG_DIR}/convmixer-{name.replace("/", "-")}_10xb64_in1k.py'


def _describe(arch: Mapping[str, int]) -> str:
    return ', '.join(f'{k}={arch[k]}' for k in arch)


def _normalize_act(act: str) -> str:
    lookup = {'relu': 'ReLU', 'gelu': 'GELU'}
    if act.lower() not in lookup:
        raise ValueError(f'Unknown activation {act!r}: use relu or gelu.')
    return lookup[act.lower()]


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
            must have (see :func:`parse_arch`). Defaults to None.
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
        check_arch(detected, parse_arch(arch), f'--arch {arch}')
    old_meta = checkpoint.get('meta') if isinstance(checkpoint,
                                                    Mapping) else None
    old_meta = old_meta if isinstance(old_meta, Mapping) else {}
    cfg_act = None
    if config is not None:
        cfg_arch, cfg_act = arch_from_config(config)
        cfg_shapes = expected_shapes({**detected, **cfg_arch})
        problems = shape_mismatches(state, cfg_shapes)
        if problems:
            raise CheckpointError(
                f'The checkpoint does not fit the config ({len(problems)} '
                f'mismatched keys):\n{format_mismatches(problems)}\nThe '
                f'checkpoint is a ConvMixer with {_describe(detected)}.')
    if act is not None:
        act_type = _normalize_act(act)
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


def save_atomic(obj: Any, dst: str, force: bool = False) -> None:
    """``torch.save`` through a temporary file beside ``dst``.

    Args:
        obj (Any): What to save.
        dst (str): The destination file.
        force (bool): Overwrite an existing ``dst``. Defaults to False.
    """
    if osp.isdir(dst):
        raise IsADirectoryError(f'{dst} is a directory: give a file name.')
    if osp.exists(dst) and not force:
        raise FileExistsError(
            f'{dst} already exists: pass --force (force=True) to overwrite '
            'it.')
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    atomic_save_bytes(dst, lambda tmp: torch.save(obj, tmp))


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
    if osp.exists(dst) and not force:
        raise FileExistsError(
            f'{dst} already exists: pass --force (force=True) to overwrite '
            'it.')
    checkpoint = load_any_checkpoint(src)
    state, meta = convert_state_dict(checkpoint, arch, act, config, use_ema)
    meta['source_file'] = osp.basename(src)
    if to == 'mmpretrain':
        save_atomic(dict(state_dict=state, meta=meta), dst, force)
    else:
        save_atomic(from_mm_layout(state, to), dst, force)
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
