# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Export a classifier config + checkpoint to ONNX, checked with onnxruntime.

Example:
    python tools/deployment/pytorch2onnx.py \
        configs/convmixer/convmixer-1536-20_10xb64_in1k.py ckpt.pth \
        convmixer.onnx --dynamic-batch --opset 18
"""
import argparse
import sys
from typing import Optional, Sequence

from convmixer_mm.apis.onnx_export import (DEFAULT_OPSET, MAX_OPSET,
                                           MIN_OPSET, build_classifier,
                                           check_export_args, export_onnx,
                                           opset_of)
from convmixer_mm.cli import run


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add('config', help='config file')
    add('checkpoint', help='checkpoint file (.pth)')
    add('out', help='output .onnx file')
    add('--shape', type=int, nargs='+', default=[224, 224],
        help="input H W, or C H W (default: 224 224 and the model's C)")
    add('--opset', type=int, default=DEFAULT_OPSET,
        help=f'ONNX opset in [{MIN_OPSET}, {MAX_OPSET}] (default: '
        f'{DEFAULT_OPSET})')
    add('--dynamic-batch', action='store_true', help='dynamic batch size')
    add('--atol', type=float, default=1e-4,
        help='largest allowed difference of the logits from PyTorch')
    add('--force', action='store_true', help='overwrite OUT if it exists')
    args = parser.parse_args(argv)
    # Fail on a bad opset or output before loading anything.
    check_export_args(args.out, args.opset, args.force)
    model = build_classifier(args.config, args.checkpoint)
    diffs = export_onnx(model, args.out, args.shape, args.opset,
                        args.dynamic_batch, args.atol, args.force)
    print(f'Exported {args.out} (opset {opset_of(args.out)[0]}).')
    for batch, diff in diffs.items():
        print(f'batch {batch}: max abs diff vs PyTorch {diff:.3g}')


if __name__ == '__main__':
    sys.exit(run(main))
