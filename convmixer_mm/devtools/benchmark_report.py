# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The README's Performance section, generated from benchmark reports."""
import json
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from ..utils import atomic_save_bytes
from .benchmark import format_markdown

SECTION = '## Performance'


@dataclass
class Target:
    """A speed or memory goal checked against saved reports.

    Args:
        text (str): What is compared.
        goal (str): The goal, e.g. ``'>= 1.3x'``.
        find (callable): ``report -> (value, detail)`` or None when the
            report does not measure this target.
        passed (callable): ``value -> bool``.
        fmt (str): Format of the value.
    """
    text: str
    goal: str
    find: Callable[[dict], Optional[Tuple[float, str]]]
    passed: Callable[[float], bool]
    fmt: str = '{:.2f}x'


def _arch_is(report: dict, dims: int, depth: int) -> bool:
    arch = report['settings']['arch']
    return arch['embed_dims'] == dims and arch['depth'] == depth


def _rows(report: dict, mode: str) -> dict:
    return report['results'].get(mode, {}).get('candidates', {})


def _main(rows: dict, dtype: str) -> Optional[str]:
    """Our first candidate in ``dtype``: the one the run is about."""
    return next((n for n, r in rows.items()
                 if n.startswith('ours') and r['dtype'] == dtype), None)


def _speedup(mode: str, dims: int, depth: int, den: str,
             dtype: str = 'fp32') -> Callable:

    def find(report: dict) -> Optional[Tuple[float, str]]:
        rows = _rows(report, mode)
        num = _main(rows, dtype)
        # The targets are at 224 px; other runs measure something else.
        if not _arch_is(report, dims, depth) or num is None or \
                den not in rows or report['settings']['img_size'] != 224:
            return None
        a, b = rows[num]['img_per_s'], rows[den]['img_per_s']
        return a / b, f'`{num}` {a:.3g} / `{den}` {b:.3g} img/s'

    return find


def _gemm_fraction(mode: str, dims: int, depth: int,
                   key: str = 'img_per_s') -> Callable:
    """Our fp32 GFLOP/s over the GEMM's, on median (or ``best_``) times."""
    gemm_key = 'gemm_best' if key.startswith('best') else 'gemm'

    def find(report: dict) -> Optional[Tuple[float, str]]:
        result = report['results'].get(mode, {})
        num = _main(result.get('candidates', {}), 'fp32')
        if not _arch_is(report, dims, depth) or num is None or \
                gemm_key not in result:
            return None
        gemm = max(v for k, v in result[gemm_key].items()
                   if k.endswith(':fp32'))
        passes = 3 if mode == 'train' else 1
        flops = 2 * passes * report['macs_per_image'] * \
            result['candidates'][num][key] / 1e9
        return flops / gemm, f'`{num}` {flops:.0f} / GEMM {gemm:.0f} GFLOP/s'

    return find


def _peak_memory(dims: int, depth: int, den: str) -> Callable:
    """Our training peak memory over ``den``'s."""

    def find(report: dict) -> Optional[Tuple[float, str]]:
        rows = _rows(report, 'train')
        num = _main(rows, 'fp32')
        if not _arch_is(report, dims, depth) or num is None or \
                'peak_mem_bytes' not in rows.get(den, {}):
            return None
        a = rows[num]['peak_mem_bytes'] / 2**20
        b = rows[den]['peak_mem_bytes'] / 2**20
        return a / b, f'`{num}` {a:.0f} / `{den}` {b:.0f} MiB'

    return find


def _bf16_speedup(key: str) -> Callable:
    """Our bf16 over our fp32 candidate, on ``key`` img/s."""

    def find(report: dict) -> Optional[Tuple[float, str]]:
        rows = _rows(report, 'inference')
        num, den = _main(rows, 'bf16'), _main(rows, 'fp32')
        if not _arch_is(report, 1024, 20) or num is None or den is None:
            return None
        a, b = rows[num][key], rows[den][key]
        return a / b, f'`{num}` {a:.1f} / `{den}` {b:.1f} img/s'

    return find


def _fashion_train(num: Optional[str] = None) -> Callable:
    """Training speed-up of ``num`` (default: our first) over mmpretrain."""

    def find(report: dict) -> Optional[Tuple[float, str]]:
        rows = _rows(report, 'train')
        name = num or _main(rows, 'fp32')
        if report['settings']['in_channels'] != 1 or name not in rows or \
                'mmpretrain' not in rows:
            return None
        a, b = rows[name]['img_per_s'], rows['mmpretrain']['img_per_s']
        return a / b, f'`{name}` {a:.0f} / `mmpretrain` {b:.0f} img/s'

    return find


def _cp_memory(report: dict) -> Optional[Tuple[float, str]]:
    rows = _rows(report, 'train')
    if not _arch_is(report, 768, 32):
        return None
    for name, row in rows.items():
        plain = name.replace('+cp', '')
        if '+cp' in name and plain in rows and \
                'peak_mem_bytes' in row:
            a = row['peak_mem_bytes'] / 2**20
            b = rows[plain]['peak_mem_bytes'] / 2**20
            return a / b, f'`{name}` {a:.0f} / `{plain}` {b:.0f} MiB'
    return None


def _at_least(goal: float) -> Callable[[float], bool]:
    return lambda v: v >= goal


TARGETS = [
    # Training speed (the model as the ImageNet configs build it).
    *[
        Target(f'{d}/{n} fp32 training step vs {peer}', f'>= {goal}x',
               _speedup('train', d, n, peer), _at_least(goal))
        for d, n, goal in ((1024, 20, 1.8), (768, 32, 1.5), (1536, 20, 1.5))
        for peer in ('timm', 'mmpretrain')
    ],
    *[
        Target(f'{d}/{n} fp32 training step vs {peer}, channels_last',
               '(fair)', _speedup('train', d, n, peer + '+cl'),
               _at_least(1.0))
        for d, n in ((1024, 20), (768, 32), (1536, 20))
        for peer in ('timm', 'mmpretrain')
    ],
    Target('1024/20 fp32 training GFLOP/s / measured GEMM GFLOP/s',
           '>= 50%', _gemm_fraction('train', 1024, 20), _at_least(0.5),
           '{:.0%}'),
    Target('1024/20 training peak memory vs mmpretrain', '<= 100%',
           _peak_memory(1024, 20, 'mmpretrain'), lambda v: v <= 1.0,
           '{:.0%}'),
    # Inference of the model as the configs build it (fused by default).
    Target('1024/20 fp32 inference vs mmpretrain built-in', '>= 1.5x',
           _speedup('inference', 1024, 20, 'mmpretrain'), _at_least(1.5)),
    Target('1024/20 fp32 inference vs timm default', '>= 1.3x',
           _speedup('inference', 1024, 20, 'timm'), _at_least(1.3)),
    Target('1024/20 fp32 inference vs mmpretrain built-in, channels_last',
           '(fair)', _speedup('inference', 1024, 20, 'mmpretrain+cl'),
           _at_least(1.0)),
    Target('1024/20 fp32 inference vs timm, channels_last', '(fair)',
           _speedup('inference', 1024, 20, 'timm+cl'), _at_least(1.0)),
    *[
        Target(f'{d}/{n} fp32 inference vs {peer}', '>= 1.3x',
               _speedup('inference', d, n, peer), _at_least(1.3))
        for d, n in ((768, 32), (1536, 20)) for peer in ('timm', 'mmpretrain')
    ],
    Target('1024/20 fp32 inference GFLOP/s / measured GEMM GFLOP/s',
           '>= 85%', _gemm_fraction('inference', 1024, 20), _at_least(0.85),
           '{:.0%}'),
    Target('the same, fastest round of each (least interference)',
           '>= 85%', _gemm_fraction('inference', 1024, 20, 'best_img_per_s'),
           _at_least(0.85), '{:.0%}'),
    Target('1024/20 bf16 inference vs our fp32', '>= 1.5x',
           _bf16_speedup('img_per_s'), _at_least(1.5)),
    Target('the same, fastest round of each', '>= 1.5x',
           _bf16_speedup('best_img_per_s'), _at_least(1.5)),
    Target('Fashion-MNIST config training step vs mmpretrain built-in',
           '>= 1.2x', _fashion_train(), _at_least(1.2)),
    Target('the same, without torch.compile (the config default)',
           '>= 1.2x', _fashion_train('ours+cl'), _at_least(1.2)),
    Target('768/32 training peak memory, with_cp / without', '<= 60%',
           _cp_memory, lambda v: v <= 0.6, '{:.0%}'),
]


def targets_table(reports: Sequence[dict]) -> List[str]:
    """Markdown rows: each target, its measured value and whether met."""
    lines = [
        '| target | goal | measured | met | from |',
        '|---|---|---:|---|---|',
    ]
    for target in TARGETS:
        for report in reports:
            found = target.find(report)
            if found is not None:
                value, detail = found
                met = 'yes' if target.passed(value) else '**no**'
                lines.append(f'| {target.text} | {target.goal} | '
                             f'{target.fmt.format(value)} | {met} | '
                             f'{detail} |')
                break
        else:
            lines.append(f'| {target.text} | {target.goal} | not measured '
                         '| - | - |')
    return lines


def performance_section(reports: Sequence[dict],
                        paths: Sequence[str]) -> str:
    """The body of the README's Performance section."""
    machines = sorted({r['machine'] for r in reports})
    lines = [
        SECTION,
        '',
        ('<!-- Generated by tools/analysis_tools/benchmark.py --readme; '
         'edit convmixer_mm/devtools/benchmark_report.py instead. -->'),
        '',
        (f'Measured on {"; ".join(machines)}. The machine was shared with '
         'other jobs, so every run interleaves its candidates (identical '
         'weights and inputs), warms up, and reports medians; a GEMM of '
         "the model's 1x1-conv shape runs in the same loop as the roofline "
         'reference (MKL `torch.mm` and oneDNN, the faster counts).'),
        '',
        ('Candidates: `ours` is `ConvMixerMM`, `mmpretrain` its built-in '
         '`ConvMixer`, `timm` its `ConvMixer`; `+cl` channels_last model '
         "and data (our configs' default), `+fuse` "
         '`convmixer_mm.models.fuse_convmixer` (in-place fusion; without '
         'it our eval-mode model still runs fused, see `fuse_eval`), '
         '`+compile` `torch.compile`, `+cp` `with_cp`, '
         '`+bf16` bf16 autocast. img/s is the median, "best" the fastest '
         'round (the cost without interference); ratios use medians. '
         'Peak memory is the growth of CUDA max '
         'allocated or, on CPU, of peak RSS during one step; "max abs '
         'diff" is the largest logit difference from our fp32 eager '
         'model.'),
        '',
        '### Fast paths',
        '',
        ('- `channels_last`: `ConvMixerDataPreprocessor(channels_last=True)`'
         ', on in every config; convolutions then run channels_last.'),
        ('- Exact inference fusion, on by default: in eval mode without '
         'gradients (`tools/test.py`, validation, `get_model`, '
         'inferencers, the demo) `ConvMixerMM(fuse_eval=True)` runs each '
         'block in four memory passes instead of seven (oneDNN conv with '
         "GELU/ReLU post-op, BN shift folded into the next 1x1 conv's "
         'bias, BN scale/add as one `addcmul`), from fused copies cached '
         'until any weight or BN statistic changes; the state dict is '
         'untouched. Logits within 1e-5 relative of the unfused fp32 '
         'model for every shipped config (`tests/test_fast_paths.py`). '
         '`fuse_eval=False` turns it off.'),
        ('- bf16/fp16: `torch.autocast` for inference (fused models follow '
         'it; bf16 logits within 3e-2 relative), `tools/train.py --amp` '
         '(`MixedPrecisionOptimWrapper`) for training.'),
        ("- `torch.compile`: `custom_hooks = [dict(type='CompileModelHook')]`"
         ' compiles the backbone in place (same checkpoint keys). It is the '
         'fastest training path measured here, but opt-in: on CPU it needs '
         'a C++ compiler (without one it warns and stays eager) and '
         "compiles for tens of seconds. mmengine's own `compile=True` "
         'compiles the whole `train_step`, whose logging makes dynamo '
         'recompile every iteration: slower than eager.'),
        ('- Depthwise conv: `convmixer_mm.models.ops.DepthwiseConv2d` runs '
         'the large-kernel depthwise conv and its gradients in a small C '
         "kernel on CPU (fp32; aten's weight gradient was most of a "
         'training step), compiled at first use in seconds and cached in '
         '`$CONVMIXER_MM_KERNEL_DIR` (default '
         '`~/.cache/convmixer_mm/kernels`); on by default, '
         '`backbone.fast_dwconv=False` turns it off; gradients within '
         '1e-4 relative of `F.conv2d` (`tests/test_dwconv.py`).'),
        ('- Memory: `backbone.with_cp=True` checkpoints every block '
         '(identical outputs, gradients and BN statistics).'),
        '',
        '### Targets',
        '',
    ]
    lines += targets_table(reports)
    lines += ['', '### Runs', '']
    for path, report in zip(paths, reports):
        lines += [f'From `{path}`:', '', format_markdown(report)]
    lines += [
        ('Re-measure everything with '
         '`bash tools/analysis_tools/benchmark_all.sh` (about 45 minutes on 2 cores), '
         'or only rewrite this section with `python '
         'tools/analysis_tools/benchmark.py --readme README.md ' +
         ' '.join(paths) + '`.'),
        '',
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
    if new == text:
        return False

    def write(tmp: str) -> None:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(new)

    atomic_save_bytes(readme, write)
    return True
