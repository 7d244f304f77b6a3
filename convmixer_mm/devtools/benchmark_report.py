# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Benchmark reports as Markdown, and the README's Performance section
(``performance.md``, then the targets and runs) generated from them."""
import functools
import json
import os.path as osp
from typing import Callable, List, Optional, Sequence, Tuple, Union

from ..utils import atomic_save_bytes

SECTION = '## Performance'
Pick = Union[str, Callable[[dict], Optional[str]]]


def _cells(row: dict, base: dict) -> List[str]:
    mem, diff = row.get('peak_mem_bytes'), row['max_abs_diff']
    return [
        f'{row["img_per_s"]:.2f}',
        f'{row["img_per_s"] / base["img_per_s"]:.2f}x',
        f'{row["best_img_per_s"]:.2f}', f'{row["gflops"]:.1f}',
        f'{row["gemm_fraction"]:.0%}',
        f'{mem / 2**20:.0f}' if mem is not None else '-',
        f'{diff:.1e}' if diff is not None else '-'
    ]


def format_markdown(report: dict) -> str:
    """Markdown tables of a report, one per mode (and its profile)."""
    s = report['settings']
    arch = s['arch']
    title = (f'ConvMixer-{arch["embed_dims"]}/{arch["depth"]} (patch '
             f'{arch["patch_size"]}, kernel {arch["kernel_size"]}), '
             f'{s["img_size"]} px, batch {s["batch_size"]}, {s["device"]}')
    out = []
    for mode, result in report['results'].items():
        rows = result['candidates']
        first = next(iter(rows))
        gemm = ', '.join(f'{k.split(":", 1)[1]} {v:.0f}'
                         for k, v in result['gemm'].items())
        out += [
            f'{title}, **{mode}**; GEMM {gemm} GFLOP/s; medians of '
            f'{s["rounds"]} interleaved rounds.', '',
            f'| candidate | img/s | vs `{first}` | best img/s | GFLOP/s | '
            'of GEMM | peak MiB | max abs diff |',
            '|---|---:|---:|---:|---:|---:|---:|---:|'
        ]
        out += [
            '| ' + ' | '.join([f'`{name}`'] + _cells(row, rows[first])) +
            ' |' for name, row in rows.items()
        ]
        out.append('')
        prof = result.get('profile')
        if prof:
            total = prof['total_ms']
            out += [
                f'Profile of `{prof["candidate"]}` (torch.profiler, self '
                f'CPU time per step, {total:.0f} ms in all):', '',
                '| operator | input shapes | calls | ms | share |',
                '|---|---|---:|---:|---:|'
            ]
            out += [
                f'| `{op["op"]}` | {op["shapes"]} | {op["calls"]} | '
                f'{op["self_ms"]:.1f} | {op["self_ms"] / total:.0%} |'
                for op in prof['ops']
            ]
            out.append('')
    return '\n'.join(out)


def _ours(dtype: str = 'fp32') -> Callable[[dict], Optional[str]]:
    """Our first candidate in ``dtype``: the one a run is about."""
    return lambda rows: next((n for n, r in rows.items()
                              if n[:4] == 'ours' and r['dtype'] == dtype),
                             None)


def _cp(plain: bool) -> Callable[[dict], str]:
    """Our first ``+cp`` candidate that has a plain twin (or the twin)."""

    def pick(rows: dict) -> str:
        cp = next((n for n in rows
                   if '+cp' in n and n.replace('+cp', '') in rows), '')
        return cp.replace('+cp', '') if plain else cp

    return pick


def _measure(mode: str, num: Pick, den: Pick, report: dict,
             key: str = 'img_per_s', fmt: str = '.3g',
             arch: Optional[Tuple[int, int]] = None,
             **settings) -> Optional[Tuple[float, str]]:
    """``rows[num][key] / rows[den][key]`` in ``mode`` of a report with
    ``arch`` (dims, depth) and ``settings``, and its detail; ``num`` and
    ``den`` name candidates or pick one from the rows. ``den='GEMM'``
    divides the GFLOP/s of ``num`` by the measured fp32 GEMM's."""
    s = report['settings']
    if arch and (s['arch']['embed_dims'], s['arch']['depth']) != arch \
            or any(s[k] != v for k, v in settings.items()):
        return None
    result = report['results'].get(mode, {})
    rows = result.get('candidates', {})
    n, d = (pick(rows) if callable(pick) else pick for pick in (num, den))
    if key not in rows.get(n, {}):
        return None
    a, unit = rows[n][key], 'img/s'
    if d == 'GEMM':
        gemm = result.get('gemm_best' if key[:4] == 'best' else 'gemm')
        if gemm is None:
            return None
        passes = 3 if mode == 'train' else 1
        a = 2 * passes * report['macs_per_image'] * a / 1e9
        b = max(v for k, v in gemm.items() if k.endswith(':fp32'))
        unit = 'GFLOP/s'
    elif key not in rows.get(d, {}):
        return None
    else:
        b, d = rows[d][key], f'`{d}`'
    if key == 'peak_mem_bytes':
        a, b, unit = a / 2**20, b / 2**20, 'MiB'
    return a / b, f'`{n}` {a:{fmt}} / {d} {b:{fmt}} {unit}'


def _target(text: str, goal: str, *args, **kwargs) -> tuple:
    return text, goal, functools.partial(_measure, *args, **kwargs)


ARCHS = ((1024, 20), (768, 32), (1536, 20))
OURS = _ours()
#: ``(what, goal, measure)``: goals are ``>= X``/``<= X`` ratios (``x``)
#: or fractions (``%``); ``(fair)`` means at least 1 (like for like).
TARGETS = [
    # Training speed (the model as the ImageNet configs build it).
    *[_target(f'{d}/{n} fp32 training step vs {peer}', f'>= {goal}x',
              'train', OURS, peer, arch=(d, n), img_size=224)
      for (d, n), goal in zip(ARCHS, (1.8, 1.5, 1.5))
      for peer in ('timm', 'mmpretrain')],
    *[_target(f'{d}/{n} fp32 training step vs {peer}, channels_last',
              '(fair)', 'train', OURS, peer + '+cl', arch=(d, n),
              img_size=224)
      for d, n in ARCHS for peer in ('timm', 'mmpretrain')],
    _target('1024/20 fp32 training GFLOP/s / measured GEMM GFLOP/s',
            '>= 50%', 'train', OURS, 'GEMM', fmt='.0f', arch=(1024, 20)),
    _target('1024/20 training peak memory vs mmpretrain', '<= 100%',
            'train', OURS, 'mmpretrain', key='peak_mem_bytes', fmt='.0f',
            arch=(1024, 20)),
    # Inference of the model as the configs build it (fused by default).
    *[_target(f'1024/20 fp32 inference vs {text}', goal, 'inference', OURS,
              peer, arch=(1024, 20), img_size=224)
      for text, goal, peer in (
          ('mmpretrain built-in', '>= 1.5x', 'mmpretrain'),
          ('timm default', '>= 1.3x', 'timm'),
          ('mmpretrain built-in, channels_last', '(fair)', 'mmpretrain+cl'),
          ('timm, channels_last', '(fair)', 'timm+cl'))],
    *[_target(f'{d}/{n} fp32 inference vs {peer}', '>= 1.3x', 'inference',
              OURS, peer, arch=(d, n), img_size=224)
      for d, n in ARCHS[1:] for peer in ('timm', 'mmpretrain')],
    *[_target(text, '>= 85%', 'inference', OURS, 'GEMM', key=key,
              fmt='.0f', arch=(1024, 20))
      for text, key in (
          ('1024/20 fp32 inference GFLOP/s / measured GEMM GFLOP/s',
           'img_per_s'),
          ('the same, fastest round of each (least interference)',
           'best_img_per_s'))],
    *[_target(text, '>= 1.5x', 'inference', _ours('bf16'), OURS, key=key,
              fmt='.1f', arch=(1024, 20))
      for text, key in (('1024/20 bf16 inference vs our fp32', 'img_per_s'),
                        ('the same, fastest round of each',
                         'best_img_per_s'))],
    *[_target(text, '>= 1.2x', 'train', num, 'mmpretrain', fmt='.0f',
              in_channels=1)
      for text, num in (
          ('Fashion-MNIST config training step vs mmpretrain built-in',
           OURS),
          ('the same, without torch.compile (the config default)',
           'ours+cl'))],
    _target('768/32 training peak memory, with_cp / without', '<= 60%',
            'train', _cp(False), _cp(True), key='peak_mem_bytes', fmt='.0f',
            arch=(768, 32)),
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
    for text, goal, measure in TARGETS:
        found = next(filter(None, map(measure, reports)), None)
        if found is None:
            lines.append(f'| {text} | {goal} | not measured | - | - |')
            continue
        value, detail = found
        shown = f'{value:.0%}' if goal.endswith('%') else f'{value:.2f}x'
        met = 'yes' if _met(goal, value) else '**no**'
        lines.append(f'| {text} | {goal} | {shown} | {met} | {detail} |')
    return lines


def performance_section(reports: Sequence[dict],
                        paths: Sequence[str]) -> str:
    """The README's Performance section."""
    with open(osp.join(osp.dirname(__file__), 'performance.md')) as f:
        intro = f.read()
    machines = '; '.join(sorted({r['machine'] for r in reports}))
    lines = [SECTION, '', intro.replace('{machines}', machines)]
    lines += targets_table(reports) + ['', '### Runs', '']
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
    """Replace the Performance section of ``readme`` from JSON reports;
    return whether the file changed (it is not rewritten otherwise)."""
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
