# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Print the parameters and FLOPs of a config's model.

FLOPs are multiply-adds of one image, counted with mmengine's
``FlopAnalyzer`` (plus ``padding='same'`` convs and fused attention, which
it skips). Example:
    python tools/analysis_tools/get_flops.py \
        configs/convmixer/convmixer-1536-20_10xb64_in1k.py --shape 224 224
"""
import argparse
import sys
from typing import Optional, Sequence

from convmixer_mm.apis.complexity import config_complexity
from convmixer_mm.cli import run


def _human(count: int) -> str:
    return f'{count / 1e9:.2f}G' if count >= 1e9 else f'{count / 1e6:.2f}M'


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description='Count the parameters and FLOPs of a model.')
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--shape', type=int, nargs='+', default=[224, 224],
        help="input H W (or C H W; C defaults to the backbone's "
        'in_channels). Defaults to 224 224.')
    args = parser.parse_args(argv)
    result = config_complexity(args.config, args.shape)
    print('Input shape: ' + 'x'.join(map(str, result['input_shape'])))
    print(f'Params: {result["params"]} ({_human(result["params"])})')
    print(f'FLOPs: {result["flops"]} ({_human(result["flops"])})')


if __name__ == '__main__':
    sys.exit(run(main))
