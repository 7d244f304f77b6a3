# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The launchers for real: two torchrun "nodes" on localhost, and
tools/slurm_train.sh and tools/slurm_test.sh on a one-node Slurm cluster
started here (tests/slurm_cluster.sh), each with two processes on CPU."""
import json
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import convmixer_mm  # noqa: F401 (lets torch.load read checkpoints)

ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..')
CONFIG = osp.join(ROOT, 'configs', 'convmixer',
                  'convmixer-128-4-p4_1xb128_fashion-mnist.py')
# 256 images in batches of 128 over 2 processes: 1 iteration per epoch
# (2 in a single process).
TINY = [
    'train_dataloader.dataset.indices=256', 'default_hooks.logger.interval=1'
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not osp.isdir('/usr/share/datasets/fashion-mnist'),
        reason='needs dataset-fashion-mnist (bash tools/install.sh)')
]


def free_port(pairs: bool = False) -> int:
    """A free port on 127.0.0.1; with ``pairs``, the next one is free too."""
    while True:
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        if not pairs:
            return port
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', port + 1))
                return port
            except OSError:
                continue


def run_nodes(commands: list, env: dict, timeout: float = 600) -> str:
    """Run one command per node at once; return node 0's output."""
    procs = [
        subprocess.Popen(command,
                         cwd=ROOT,
                         env=env,
                         stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT,
                         text=True) for command in commands
    ]
    try:
        logs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
    return logs[0]


def test_two_nodes_train_and_resume(tmp_path):
    """The README's multi-node commands, each node running its own agent
    with one process: torchrun with a c10d rendezvous trains, then
    tools/dist_train.sh with NNODES, NODE_RANK, MASTER_ADDR and PORT
    resumes."""
    work_dir = str(tmp_path)
    options = ['--work-dir', work_dir, '--no-validate', '--cfg-options', *TINY]
    log = run_nodes([[
        sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2',
        '--nproc-per-node', '1', '--rdzv-backend', 'c10d', '--rdzv-endpoint',
        f'127.0.0.1:{free_port()}', '--rdzv-id', 'convmixer',
        'tools/train.py', CONFIG, '--launcher', 'pytorch', *options,
        'train_cfg.max_epochs=1'
    ]] * 2, dict(os.environ, PYTHONPATH=ROOT))
    assert 'Distributed training: True' in log
    assert 'Epoch(train) [1][1/1]' in log

    env = dict(os.environ, NNODES='2', MASTER_ADDR='127.0.0.1',
               PORT=str(free_port()))
    log = run_nodes([[
        'env', f'NODE_RANK={rank}', 'bash', 'tools/dist_train.sh', CONFIG,
        '1', '--resume', *options, 'train_cfg.max_epochs=2'
    ] for rank in (0, 1)], env)
    assert 'resumed epoch: 1, iter: 1' in log
    assert 'Epoch(train) [2][1/1]' in log
    final = torch.load(osp.join(work_dir, 'epoch_2.pth'))
    assert (final['meta']['epoch'], final['meta']['iter']) == (2, 2)


def slurm_unavailable() -> str:
    """Why a local Slurm cluster cannot start here, or ''."""
    if os.geteuid() != 0:
        return 'not root: slurmd and munged run as root'
    if not shutil.which('slurmctld') and not shutil.which('apt-get'):
        return 'Slurm is not installed and there is no apt-get to install it'
    return ''


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
    """A one-node Slurm cluster, stopped afterwards; yields its env."""
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = str(tmp_path_factory.mktemp('slurm'))
    script = osp.join(ROOT, 'tests', 'slurm_cluster.sh')
    env = dict(os.environ, SLURM_PORT=str(free_port(pairs=True)))
    try:
        started = subprocess.run(['bash', script, 'start', cluster],
                                 env=env,
                                 capture_output=True,
                                 text=True,
                                 timeout=600)
        if started.returncode != 0:
            pytest.skip('the local Slurm cluster did not start: '
                        f'{started.stderr.strip()[-500:]}')
        yield dict(env, SLURM_CONF=osp.join(cluster, 'slurm.conf'))
    finally:
        subprocess.run(['bash', script, 'stop', cluster], check=True)


def test_slurm_train_and_test(slurm, tmp_path):
    """tools/slurm_train.sh then tools/slurm_test.sh, 2 tasks with gloo."""
    env = dict(slurm, GPUS='2', GPUS_PER_NODE='2', CPUS_PER_TASK='1',
               GRES='', MASTER_PORT=str(free_port()))
    work_dir = str(tmp_path)

    def srun(script: str, *args: str) -> str:
        result = subprocess.run(['bash', script, 'local', 'convmixer', *args],
                                cwd=ROOT,
                                env=env,
                                capture_output=True,
                                text=True,
                                timeout=600)
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-3000:]
        return log

    log = srun('tools/slurm_train.sh', CONFIG, work_dir, '--cfg-options',
               *TINY, 'val_dataloader.dataset.indices=256',
               'train_cfg.max_epochs=1')
    assert 'Distributed launcher: slurm' in log
    assert 'Epoch(train) [1][1/1]' in log
    assert 'Epoch(val) [1][1/1]    accuracy/top1' in log
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))

    out = osp.join(work_dir, 'metrics.json')
    # 512 test images in batches of 256 over 2 tasks: 1 batch each.
    log = srun('tools/slurm_test.sh', CONFIG,
               osp.join(work_dir, 'epoch_1.pth'), '--work-dir',
               osp.join(work_dir, 'test'), '--out', out, '--out-item',
               'metrics', '--cfg-options',
               'test_dataloader.dataset.indices=512')
    assert 'Distributed launcher: slurm' in log
    assert 'Epoch(test) [1/1]' in log
    with open(out) as f:
        assert 0 <= json.load(f)['accuracy/top1'] <= 100
