# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Convert an official, timm or mmpretrain ConvMixer checkpoint.

Example::

    python tools/model_converters/convmixer_to_mm.py \\
        convmixer_768_32_ks7_p7_relu.pth.tar convmixer-768-32_official.pth
"""
import argparse
import sys

from convmixer_mm.apis.converter import (convert_checkpoint,
                                         describe_conversion)
from convmixer_mm.cli import run


def convert(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description='Convert a ConvMixer checkpoint (official, timm or '
        'mmpretrain layout, detected from the keys) for convmixer_mm, or '
        'back to timm/official with --to.')
    add = parser.add_argument
    add('src', help='the checkpoint to convert')
    add('dst', help='where to write the result')
    add('--arch', help='fail unless the checkpoint is this arch (768/32, '
        '... or DIM/DEPTH/KERNEL/PATCH)')
    add('--act', choices=['relu', 'gelu'], help='the activation of the '
        "weights (default: the official release's, relu for 768/32)")
    add('--config', help='fail unless the checkpoint fits this config')
    add('--to', choices=['mmpretrain', 'timm', 'official'],
        default='mmpretrain', help='the layout to write (default: ours)')
    add('--ema', action='store_true', help='convert state_dict_ema')
    add('--force', action='store_true', help='overwrite DST if it exists')
    args = parser.parse_args(argv)
    meta = convert_checkpoint(args.src, args.dst, args.arch, args.act,
                              args.config, args.to, args.ema, args.force)
    print(describe_conversion(meta))
    print(f'Wrote {args.dst} ({args.to} layout).')


def main(argv=None) -> int:
    return run(convert, argv)


if __name__ == '__main__':
    sys.exit(main())
