# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Train a model from a config: ``python tools/train.py CONFIG [options]``.

The command line is mmpretrain's; ``--help`` lists it. The logic lives in
:mod:`convmixer_mm.cli.launch`.
"""
import sys

from convmixer_mm.cli.launch import train

if __name__ == '__main__':
    sys.exit(train())
