# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Train configs on one budget; write a markdown table and a plot.

Example (the Fashion-MNIST study of the README):
    python tools/analysis_tools/compare.py \
        configs/compare/convmixer-256-8-p4_1xb128_fashion-mnist.py \
        configs/compare/resnet18-w15_1xb128_fashion-mnist.py \
        configs/compare/vit-d128-l4-p4_1xb128_fashion-mnist.py \
        --epochs 3 --train-size 20000 --work-dir work_dirs/compare
"""
import argparse
import sys
from typing import Optional, Sequence

from convmixer_mm.cli import USER_ERRORS, run
from convmixer_mm.devtools.compare import Budget, compare


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description='Train several configs with the same budget and '
        'tabulate params, FLOPs, accuracy, speed and wall time.')
    add = parser.add_argument
    add('configs', nargs='+', help='config files')
    add('--epochs', type=int, required=True, help='epochs per model')
    add('--train-size', type=int,
        help='train on the first N training images (default: all)')
    add('--val-size', type=int,
        help='validate on the first N validation images (default: all)')
    add('--seed', type=int, default=0, help='random seed')
    add('--work-dir', default='work_dirs/compare',
        help='parent of the per-config work dirs')
    add('--out-dir',
        help='where comparison.{md,png,json} go (default: --work-dir)')
    args = parser.parse_args(argv)
    budget = Budget(args.epochs, args.train_size, args.val_size, args.seed)
    for r in compare(args.configs, budget, args.work_dir, args.out_dir):
        print(f'{r.name}: top-1 {r.accuracy:.2f}%, {r.params} params, '
              f'{r.flops} FLOPs, {r.train_images_per_s:.0f} img/s, '
              f'{r.wall_time_s:.0f} s')
    print(f'Wrote comparison.md, comparison.png and comparison.json to '
          f'{args.out_dir or args.work_dir}')


if __name__ == '__main__':
    sys.exit(run(main, errors=USER_ERRORS + (ImportError, )))
