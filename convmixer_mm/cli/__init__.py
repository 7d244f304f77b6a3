# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The command lines behind ``tools/*.py``; no library module imports them."""
