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

from convmixer_mm.cli import run
from convmixer_mm.devtools.curves import (DEFAULT_KEYS, epoch_curves,
                                          find_scalars, load_scalars,
                                          plot_curves)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Plot the curves of mmengine's vis_data/scalars.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('work_dir',
                        help='work dir, run dir or scalars.json of a run')
    parser.add_argument('--keys', nargs='+', default=list(DEFAULT_KEYS),
                        help='logged scalars, one panel each')
    parser.add_argument('--out', default='curves.png',
                        help='output image (.png, .pdf, ...)')
    parser.add_argument('--title', help='figure title')
    args = parser.parse_args(argv)
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
