# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Benchmark ConvMixer against mmpretrain's and timm's, side by side.

Examples::

    # fp32 inference of ConvMixer-1024/20, 224 px, batch 8, on 2 threads
    python tools/analysis_tools/benchmark.py 1024/20 --threads 2 \\
        --out work_dirs/bench/infer_1024.json
    # Training steps of the Fashion-MNIST config
    python tools/analysis_tools/benchmark.py \\
        configs/convmixer/convmixer-128-4-p4_1xb128_fashion-mnist.py \\
        --img-size 28 --batch-size 128 --mode train
    # Write the README's Performance section from saved reports
    python tools/analysis_tools/benchmark.py --readme README.md \\
        work_dirs/bench/*.json
"""
import argparse
import functools
import importlib.util
import json
import os
import os.path as osp
import sys
from typing import List, Optional

from convmixer_mm.devtools.benchmark import (BenchmarkSettings,
                                             format_markdown, run_benchmark,
                                             settings_from_config)
from convmixer_mm.devtools.benchmark_report import update_readme
from convmixer_mm.models import ConvMixerMM
from convmixer_mm.utils import atomic_save_bytes


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Time ConvMixer inference and training steps against '
        "mmpretrain's and timm's, interleaved, with identical weights.")
    add = parser.add_argument
    add('model', nargs='?', help='a convmixer_mm config file or an arch name '
        f'({", ".join(ConvMixerMM.arch_settings)})')
    add('--batch-size', type=int, default=8)
    add('--img-size', type=int, default=224)
    add('--device', choices=['cpu', 'cuda'], default='cpu')
    add('--dtype', choices=['fp32', 'bf16', 'fp16'], default='fp32',
        help='autocast dtype of every candidate that names none')
    add('--channels-last', choices=['on', 'off'], default='on',
        help='channels_last model and data for our main candidate')
    add('--compile', choices=['on', 'off'], default='off',
        help='torch.compile our main candidate')
    add('--fuse', choices=['on', 'off'], default='off',
        help='fuse_convmixer our main candidate (inference only; without it '
        'the model still runs fused in eval mode, see fuse_eval)')
    add('--with-cp', action='store_true',
        help='gradient checkpointing in our main candidate')
    add('--baselines', nargs='*',
        default=['mmpretrain', 'timm', 'mmpretrain+cl', 'timm+cl'],
        help='candidates to compare with (timm ones are dropped when timm '
        'is not installed)')
    add('--candidates', nargs='+',
        help='the full candidate list instead of the main candidate and '
        'baselines, e.g. ours+cl+fuse ours+cl+fuse+bf16 mmpretrain')
    add('--mode', choices=['inference', 'train', 'both'], default='inference')
    add('--warmup', type=int, default=2)
    add('--rounds', type=int, default=10)
    add('--threads', type=int, help='torch threads')
    add('--no-memory', action='store_true', help='skip peak memory')
    add('--profile', action='store_true',
        help='also profile the first candidate (torch.profiler)')
    add('--out', help='write the JSON report here')
    add('--readme', metavar='README',
        help='instead of benchmarking, rewrite the "## Performance" section '
        'of README from the JSON reports given as the positional arguments')
    add('reports', nargs='*', help='JSON reports (--readme)')
    return parser.parse_args(argv)


def main_candidates(args: argparse.Namespace) -> List[str]:
    """Our candidate from the flags; unfused too when training."""
    flags = [
        flag for flag, on in (('cl', args.channels_last == 'on'),
                              ('fuse', args.fuse == 'on'),
                              ('compile', args.compile == 'on'),
                              ('cp', args.with_cp)) if on
    ]
    fused = '+'.join(['ours'] + flags)
    unfused = '+'.join(['ours'] + [f for f in flags if f != 'fuse'])
    # Fused models are inference-only.
    return {'inference': [fused], 'train': [unfused]}.get(
        args.mode, list(dict.fromkeys([fused, unfused])))


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.readme:
        changed = update_readme(args.readme,
                                [args.model] * bool(args.model) + args.reports)
        print(f'Updated the Performance section of {args.readme}.' if changed
              else f'The Performance section of {args.readme} is already '
              'up to date.')
        return
    if args.model is None:
        sys.exit('Give a config file or an arch name.')
    candidates = args.candidates or main_candidates(args) + args.baselines
    if importlib.util.find_spec('timm') is None:
        candidates = [c for c in candidates if not c.startswith('timm')]
    fields = {
        k: getattr(args, k)
        for k in ('batch_size', 'img_size', 'device', 'dtype', 'warmup',
                  'rounds', 'profile', 'threads')
    }
    fields.update(
        candidates=candidates,
        modes=['inference', 'train'] if args.mode == 'both' else [args.mode],
        memory=not args.no_memory)
    if not args.model.endswith('.py'):
        settings = BenchmarkSettings(
            arch=ConvMixerMM.parse_arch(args.model), **fields)
    elif osp.isfile(args.model):
        settings = settings_from_config(args.model, **fields)
    else:
        sys.exit(f'Config {args.model} does not exist.')
    report = run_benchmark(settings, functools.partial(print, flush=True))
    print(f'{report["machine"]}\n\n{format_markdown(report)}')
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        atomic_save_bytes(args.out, json.dumps(report, indent=1))
        print(f'Wrote {args.out}')


if __name__ == '__main__':
    main()
