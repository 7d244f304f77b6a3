# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [opts]``
(mmpretrain's command line; the logic is in :mod:`convmixer_mm.cli.launch`)."""
import sys

from convmixer_mm.cli.launch import test

if __name__ == '__main__':
    sys.exit(test())
