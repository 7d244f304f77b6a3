# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Plot per-epoch train loss, lr and val accuracy of a training run.

Example:
    python tools/analysis_tools/plot_curves.py work_dirs/my_run \
        --keys loss lr accuracy/top1 --out curves.png
"""
import argparse
import os.path as osp
import sys
from typing import Optional, Sequence

from convmixer_mm.devtools.curves import (DEFAULT_KEYS, epoch_curves,
                                          find_scalars, load_scalars,
                                          plot_curves)
from convmixer_mm.cli import run


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Plot the curves of mmengine's vis_data/scalars.json.")
    add = parser.add_argument
    add('work_dir', help='work dir, run dir or scalars.json of a run')
    add('--keys', nargs='+', default=list(DEFAULT_KEYS),
        help='logged scalars, one panel each. Defaults to '
        f'{" ".join(DEFAULT_KEYS)}.')
    add('--out', default='curves.png',
        help='output image (.png, .pdf, ...). Defaults to curves.png.')
    add('--title', help='figure title')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    curves = epoch_curves(load_scalars(args.work_dir), args.keys)
    label = osp.basename(osp.normpath(args.work_dir))
    plot_curves({label: curves}, args.out, title=args.title)
    print(f'Read {find_scalars(args.work_dir)}')
    for key, (epochs, values) in curves.items():
        print(f'{key}: ' + ', '.join(f'{e}: {v:.4g}'
                                     for e, v in zip(epochs, values)))
    print(f'Saved {args.out}')


if __name__ == '__main__':
    sys.exit(run(main))
