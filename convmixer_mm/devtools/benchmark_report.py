# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The README's Performance section, generated from benchmark reports."""
import json
from typing import Callable, List, Optional, Sequence, Tuple, Union

from ..utils import atomic_save_bytes
from .benchmark import format_markdown

SECTION = '## Performance'


def _main(rows: dict, dtype: str) -> Optional[str]:
    """Our first candidate in ``dtype``: the one the run is about."""
    return next((n for n, r in rows.items()
                 if n.startswith('ours') and r['dtype'] == dtype), None)


def _cp(rows: dict) -> Optional[str]:
    """Our first ``+cp`` candidate that has a plain twin."""
    return next((n for n in rows if '+cp' in n and n.replace('+cp', '')
                 in rows), None)


Finder = Callable[[dict], Optional[Tuple[float, str]]]


def _ratio(mode: str,
           num: Union[str, Callable[[dict], Optional[str]]],
           den: Union[str, Callable[[dict], Optional[str]]],
           key: str = 'img_per_s',
           fmt: str = '.3g',
           arch: Optional[Tuple[int, int]] = None,
           **settings) -> Finder:
    """``rows[num][key] / rows[den][key]`` of the first report of ``mode``
    with ``arch`` (dims, depth) and ``settings``; ``num`` and ``den`` are
    candidate names, or functions of the rows that pick one."""

    def find(report: dict) -> Optional[Tuple[float, str]]:
        s = report['settings']
        if arch and (s['arch']['embed_dims'], s['arch']['depth']) != arch \
                or any(s[k] != v for k, v in settings.items()):
            return None
        rows = report['results'].get(mode, {}).get('candidates', {})
        n = num(rows) if callable(num) else num
        d = den(rows) if callable(den) else den
        if key not in rows.get(n, {}) or key not in rows.get(d, {}):
            return None
        a, b, unit = rows[n][key], rows[d][key], 'img/s'
        if key == 'peak_mem_bytes':
            a, b, unit = a / 2**20, b / 2**20, 'MiB'
        return a / b, f'`{n}` {a:{fmt}} / `{d}` {b:{fmt}} {unit}'

    return find


def _gemm_fraction(mode: str, key: str = 'img_per_s') -> Finder:
    """Our fp32 GFLOP/s on 1024/20 over the GEMM's, on median (or
    ``best_``) times."""
    gemm_key = 'gemm_best' if key.startswith('best') else 'gemm'

    def find(report: dict) -> Optional[Tuple[float, str]]:
        result = report['results'].get(mode, {})
        num = _main(result.get('candidates', {}), 'fp32')
        arch = report['settings']['arch']
        if (arch['embed_dims'], arch['depth']) != (1024, 20) or \
                num is None or gemm_key not in result:
            return None
        gemm = max(v for k, v in result[gemm_key].items()
                   if k.endswith(':fp32'))
        passes = 3 if mode == 'train' else 1
        flops = 2 * passes * report['macs_per_image'] * \
            result['candidates'][num][key] / 1e9
        return flops / gemm, f'`{num}` {flops:.0f} / GEMM {gemm:.0f} GFLOP/s'

    return find


def _ours(dtype: str = 'fp32') -> Callable[[dict], Optional[str]]:
    return lambda rows: _main(rows, dtype)


ARCHS = ((1024, 20), (768, 32), (1536, 20))
#: ``(what, goal, finder)``: goals are ``>= X``/``<= X`` ratios (``x``) or
#: fractions (``%``); ``(fair)`` means at least 1 (a like-for-like check).
TARGETS: List[Tuple[str, str, Finder]] = [
    # Training speed (the model as the ImageNet configs build it).
    *[(f'{d}/{n} fp32 training step vs {peer}', f'>= {goal}x',
       _ratio('train', _ours(), peer, arch=(d, n), img_size=224))
      for (d, n), goal in zip(ARCHS, (1.8, 1.5, 1.5))
      for peer in ('timm', 'mmpretrain')],
    *[(f'{d}/{n} fp32 training step vs {peer}, channels_last', '(fair)',
       _ratio('train', _ours(), peer + '+cl', arch=(d, n), img_size=224))
      for d, n in ARCHS for peer in ('timm', 'mmpretrain')],
    ('1024/20 fp32 training GFLOP/s / measured GEMM GFLOP/s', '>= 50%',
     _gemm_fraction('train')),
    ('1024/20 training peak memory vs mmpretrain', '<= 100%',
     _ratio('train', _ours(), 'mmpretrain', 'peak_mem_bytes', '.0f',
            (1024, 20))),
    # Inference of the model as the configs build it (fused by default).
    *[(f'1024/20 fp32 inference vs {text}', goal,
       _ratio('inference', _ours(), peer, arch=(1024, 20), img_size=224))
      for text, goal, peer in (
          ('mmpretrain built-in', '>= 1.5x', 'mmpretrain'),
          ('timm default', '>= 1.3x', 'timm'),
          ('mmpretrain built-in, channels_last', '(fair)', 'mmpretrain+cl'),
          ('timm, channels_last', '(fair)', 'timm+cl'))],
    *[(f'{d}/{n} fp32 inference vs {peer}', '>= 1.3x',
       _ratio('inference', _ours(), peer, arch=(d, n), img_size=224))
      for d, n in ARCHS[1:] for peer in ('timm', 'mmpretrain')],
    ('1024/20 fp32 inference GFLOP/s / measured GEMM GFLOP/s', '>= 85%',
     _gemm_fraction('inference')),
    ('the same, fastest round of each (least interference)', '>= 85%',
     _gemm_fraction('inference', 'best_img_per_s')),
    *[(text, '>= 1.5x',
       _ratio('inference', _ours('bf16'), _ours(), key, '.1f', (1024, 20)))
      for text, key in (('1024/20 bf16 inference vs our fp32', 'img_per_s'),
                        ('the same, fastest round of each',
                         'best_img_per_s'))],
    *[(text, '>= 1.2x',
       _ratio('train', num, 'mmpretrain', fmt='.0f', in_channels=1))
      for text, num in (
          ('Fashion-MNIST config training step vs mmpretrain built-in',
           _ours()),
          ('the same, without torch.compile (the config default)',
           'ours+cl'))],
    ('768/32 training peak memory, with_cp / without', '<= 60%',
     _ratio('train', _cp, lambda rows: (_cp(rows) or '').replace('+cp', ''),
            'peak_mem_bytes', '.0f', (768, 32))),
]


def _met(goal: str, value: float) -> bool:
    if goal == '(fair)':
        return value >= 1
    op, limit = goal.split()
    bound = float(limit.rstrip('x%')) / (100 if limit.endswith('%') else 1)
    return value >= bound if op == '>=' else value <= bound


def targets_table(reports: Sequence[dict]) -> List[str]:
    """Markdown rows: each target, its measured value and whether met."""
    lines = [
        '| target | goal | measured | met | from |',
        '|---|---|---:|---|---|',
    ]
    for text, goal, find in TARGETS:
        found = next((f for f in map(find, reports) if f is not None), None)
        if found is None:
            lines.append(f'| {text} | {goal} | not measured | - | - |')
            continue
        value, detail = found
        shown = f'{value:.0%}' if goal.endswith('%') else f'{value:.2f}x'
        met = 'yes' if _met(goal, value) else '**no**'
        lines.append(f'| {text} | {goal} | {shown} | {met} | {detail} |')
    return lines


#: The section's text before its tables; a line that starts with two
#: spaces continues the one before (the README keeps each paragraph and
#: list item on one line).
INTRO = """\
<!-- Generated by tools/analysis_tools/benchmark.py --readme; edit
  convmixer_mm/devtools/benchmark_report.py instead. -->

Measured on {machines}. The machine was shared with other jobs, so every run
  interleaves its candidates (identical weights and inputs), warms up, and
  reports medians; a GEMM of the model's 1x1-conv shape runs in the same loop
  as the roofline reference (MKL `torch.mm` and oneDNN, the faster counts).

Candidates: `ours` is `ConvMixerMM`, `mmpretrain` its built-in `ConvMixer`,
  `timm` its `ConvMixer`; `+cl` channels_last model and data (our configs'
  default), `+fuse` `convmixer_mm.models.fuse_convmixer` (in-place fusion;
  without it our eval-mode model still runs fused, see `fuse_eval`), `+compile`
  `torch.compile`, `+cp` `with_cp`, `+bf16` bf16 autocast. img/s is the median,
  "best" the fastest round (the cost without interference); ratios use medians.
  Peak memory is the growth of CUDA max allocated or, on CPU, of peak RSS
  during one step; "max abs diff" is the largest logit difference from our fp32
  eager model.

### Fast paths

- `channels_last`: `ConvMixerDataPreprocessor(channels_last=True)`, on in every
  config; convolutions then run channels_last.
- Exact inference fusion, on by default: in eval mode without gradients
  (`tools/test.py`, validation, `get_model`, inferencers, the demo)
  `ConvMixerMM(fuse_eval=True)` runs each block in four memory passes instead
  of seven (oneDNN conv with GELU/ReLU post-op, BN shift folded into the next
  1x1 conv's bias, BN scale/add as one `addcmul`), from fused copies cached
  until any weight or BN statistic changes; the state dict is untouched. Logits
  within 1e-5 relative of the unfused fp32 model for every shipped config
  (`tests/test_fast_paths.py`). `fuse_eval=False` turns it off.
- bf16/fp16: `torch.autocast` for inference (fused models follow it; bf16
  logits within 3e-2 relative), `tools/train.py --amp`
  (`MixedPrecisionOptimWrapper`) for training.
- `torch.compile`: `custom_hooks = [dict(type='CompileModelHook')]` compiles
  the backbone in place (same checkpoint keys). It is the fastest training path
  measured here, but opt-in: on CPU it needs a C++ compiler (without one it
  warns and stays eager) and compiles for tens of seconds. mmengine's own
  `compile=True` compiles the whole `train_step`, whose logging makes dynamo
  recompile every iteration: slower than eager.
- Depthwise conv: `convmixer_mm.models.ops.DepthwiseConv2d` runs the
  large-kernel depthwise conv and its gradients in a small C kernel on CPU
  (fp32; aten's weight gradient was most of a training step), compiled at first
  use in seconds and cached in `$CONVMIXER_MM_KERNEL_DIR` (default
  `~/.cache/convmixer_mm/kernels`); on by default, `backbone.fast_dwconv=False`
  turns it off; gradients within 1e-4 relative of `F.conv2d`
  (`tests/test_dwconv.py`).
- Training activation + BatchNorm: `ConvMixerMM(fuse_train=True)`, on by
  default, runs every activation (GELU or ReLU), training-mode BN and residual
  sum as one C op (`convmixer_mm.models.ops.act_bn`) of two memory passes
  forward and two backward, where aten runs four ops; outputs, gradients and
  running statistics within 1e-5 relative of the modules
  (`tests/test_act_bn.py`); `backbone.fuse_train=False` turns it off. The C
  kernels run on torch's own OpenMP threads.
- Memory: `backbone.with_cp=True` checkpoints every block (identical outputs,
  gradients and BN statistics).

### Targets
"""


def performance_section(reports: Sequence[dict],
                        paths: Sequence[str]) -> str:
    """The body of the README's Performance section."""
    machines = '; '.join(sorted({r['machine'] for r in reports}))
    intro = INTRO.replace('\n  ', ' ').replace('{machines}', machines)
    lines = [SECTION, '', intro]
    lines += targets_table(reports)
    lines += ['', '### Runs', '']
    for path, report in zip(paths, reports):
        lines += [f'From `{path}`:', '', format_markdown(report)]
    lines += [
        'Re-measure everything with `bash tools/analysis_tools/'
        'benchmark_all.sh` (about 45 minutes on 2 cores), or only rewrite '
        'this section with `python tools/analysis_tools/benchmark.py '
        f'--readme README.md {" ".join(paths)}`.', ''
    ]
    return '\n'.join(lines)


def update_readme(readme: str, paths: Sequence[str]) -> bool:
    """Replace the Performance section of ``readme`` from JSON reports.

    Returns:
        bool: Whether the file changed (it is not rewritten otherwise).
    """
    if not paths:
        raise ValueError('No reports given: pass the JSON files written '
                         'by --out.')
    reports = []
    for path in paths:
        with open(path) as f:
            reports.append(json.load(f))
    with open(readme, encoding='utf-8') as f:
        text = f.read()
    start = text.find(SECTION + '\n')
    if start < 0:
        raise ValueError(f'{readme} has no "{SECTION}" heading to fill in.')
    end = text.find('\n## ', start + len(SECTION))
    end = len(text) if end < 0 else end + 1
    new = text[:start] + performance_section(reports, paths) + '\n' + \
        text[end:]
    if new != text:
        atomic_save_bytes(readme, new)
    return new != text
