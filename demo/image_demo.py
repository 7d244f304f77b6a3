# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Classify an image and print the top-k classes with their scores.

Example::

    python demo/image_demo.py demo/chelsea.jpg \\
        convmixer-mm_1536-20_official-in1k \\
        --pretrained convmixer-1536-20_official.pth
"""
import argparse
import sys

import torch

from convmixer_mm.apis import classify
from convmixer_mm.cli import run
from convmixer_mm.utils import UserError


def demo(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add('img', help='the image file')
    add('model', help='a config file or a model name '
        "(mmpretrain.list_models('convmixer-mm*'))")
    add('--pretrained', help="the checkpoint, any layout (default: the "
        "model name's official weights)")
    add('--topk', type=int, default=5, help='how many classes to print')
    add('--device', choices=['cpu', 'cuda'],
        default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise UserError('CUDA is not available here: use --device cpu.')
    result = classify(args.model, args.img, pretrained=args.pretrained or True,
                      device=args.device, topk=args.topk)
    print(f'{args.img}:')
    for rank, (label, name, score) in enumerate(result['topk'], 1):
        print(f'{rank}. {name} (class {label}): {score:.4f}')


def main(argv=None) -> int:
    return run(demo, argv)


if __name__ == '__main__':
    sys.exit(main())
