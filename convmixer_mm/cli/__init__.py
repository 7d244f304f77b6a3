# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The command lines behind ``tools/*.py``; no library module imports them.

:func:`run` is the one place where bad input becomes one ``error: ...``
line on stderr and exit status 1 (argparse keeps 2 for bad syntax).
"""
import sys
from typing import Callable, Optional, Sequence, Tuple, Type

from ..utils import UserError

#: Bad input: our own errors, and the OSError / ValueError of file and
#: argument checks. Training and testing catch only ``UserError``, so that
#: a bug inside a run keeps its traceback.
USER_ERRORS: Tuple[Type[BaseException], ...] = (UserError, OSError,
                                                ValueError)


def run(main: Callable[[Optional[Sequence[str]]], object],
        argv: Optional[Sequence[str]] = None,
        errors: Tuple[Type[BaseException], ...] = USER_ERRORS) -> int:
    """Call ``main(argv)`` (``argv`` None: ``sys.argv[1:]``) and return
    the exit status: 0, or 1 after reporting one of ``errors`` as
    ``error: ...`` rather than as a traceback."""
    try:
        main(argv)
    except errors as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0
