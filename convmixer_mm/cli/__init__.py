# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The command lines behind ``tools/*.py``; no library module imports them."""
import sys
from typing import Callable, Optional, Sequence, Tuple, Type

from ..utils import UserError

# Bad input: our errors and those of file and argument checks.
USER_ERRORS: Tuple[Type[BaseException], ...] = (UserError, OSError,
                                                ValueError)


def run(main: Callable[[Optional[Sequence[str]]], object],
        argv: Optional[Sequence[str]] = None,
        errors: Tuple[Type[BaseException], ...] = USER_ERRORS) -> int:
    """Call ``main(argv)``; the one place where one of ``errors`` becomes
    one ``error: ...`` line on stderr and exit status 1."""
    try:
        main(argv)
    except errors as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0
