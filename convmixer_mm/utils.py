# Copyright (c) convmixer_mm contributors. All rights reserved.
"""What every layer needs: the user-error type and atomic file writes."""
import os
import os.path as osp
from typing import Callable, Union


class UserError(Exception):
    """Bad user input (a path, a file, a setting): the command lines print
    its message as one ``error: ...`` line and exit with status 1."""


def atomic_save_bytes(path: str,
                      write: Union[str, Callable[[str], None]]) -> None:
    """Write a file through a temporary sibling, then rename it in place.

    ``write`` writes the whole file to the temporary path it is given (or
    is the text to write); the data is then fsynced and ``os.replace``-d
    onto ``path``, and the directory entry fsynced, so a crash leaves
    either the old file or the new one, never a truncated one.
    """
    directory, name = osp.split(osp.abspath(path))
    tmp = osp.join(directory, f'.{name}.{os.getpid()}.part')
    try:
        if isinstance(write, str):
            with open(tmp, 'w', encoding='utf-8') as f:
                f.write(write)
        else:
            write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class OutputExistsError(UserError, FileExistsError):
    """An output file exists, and overwriting it was not asked for."""


def refuse_overwrite(path: str, force: bool) -> None:
    """Raise :class:`OutputExistsError` if ``path`` exists and not
    ``force``: every tool that writes a named output file calls this."""
    if osp.exists(path) and not force:
        raise OutputExistsError(
            f'{path!r} already exists: pass --force to overwrite it.')
