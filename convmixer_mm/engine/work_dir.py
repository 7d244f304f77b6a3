# Copyright (c) convmixer_mm contributors. All rights reserved.
"""One training run per work dir, and no partial files of killed saves."""
import contextlib
import fcntl
import os
import os.path as osp
import re
import socket
from typing import Iterator

from ..utils import UserError


class WorkDirBusyError(UserError, RuntimeError):
    """Another live run holds the work dir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_parts(work_dir: str) -> None:
    """Remove the ``.NAME.PID.part`` files that ``atomic_save_bytes`` left
    when its process ``PID`` was killed; those of live processes stay."""
    for name in os.listdir(work_dir):
        match = re.fullmatch(r'\..+\.(\d+)\.part', name)
        if match and not _alive(int(match.group(1))):
            os.remove(osp.join(work_dir, name))


@contextlib.contextmanager
def work_dir_lock(work_dir: str) -> Iterator[None]:
    """Hold the work dir (created if missing) for one run, then remove its
    stale partial files; raise :class:`WorkDirBusyError` if another run
    holds it.

    The lock is a ``flock`` on ``WORK_DIR/.lock``, which the kernel releases
    when its process ends, however it ends. Only rank 0 of a distributed run
    (torchrun's, slurm's or MPI's) takes it. If the run fails, the lock file
    and work dir are removed again when this created them and nothing else
    was written.
    """
    rank = next((os.environ[key]
                 for key in ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK',
                             'PMI_RANK') if key in os.environ), '0')
    if rank != '0':
        yield
        return
    lock = osp.join(work_dir, '.lock')
    created = [path for path in (lock, work_dir) if not osp.exists(path)]
    os.makedirs(work_dir, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 256).decode(errors='replace').strip()
        os.close(fd)
        raise WorkDirBusyError(
            f'the work dir {work_dir!r} is in use by another run '
            f'({holder or "starting"}): wait for it to end, stop it, or '
            'pass another --work-dir.') from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f'pid {os.getpid()} on {socket.gethostname()}'.encode())
        remove_stale_parts(work_dir)
        yield
    except BaseException:
        if lock in created:
            os.remove(lock)
        if work_dir in created and not os.listdir(work_dir):
            os.rmdir(work_dir)
        raise
    finally:
        os.close(fd)
