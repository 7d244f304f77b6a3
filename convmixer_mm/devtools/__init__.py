# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Development tooling (benchmarks, README report, comparison study, curves).

Nothing in the library imports this package; ``tools/analysis_tools`` does.
"""
