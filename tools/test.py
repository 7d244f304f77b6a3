# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [opts]``.

The command line is mmpretrain's; ``--help`` lists it. The logic lives in
:mod:`convmixer_mm.cli.launch`.
"""
import sys

from convmixer_mm.cli.launch import test

if __name__ == '__main__':
    sys.exit(test())
