# Copyright (c) convmixer_mm contributors. All rights reserved.
"""``tools/train.py`` and ``tools/test.py``: mmpretrain's command lines,
where a bad config, data set, checkpoint or ``--cfg-options`` ends in one
``error:`` line, exit status 1 (2 for bad syntax) and nothing written."""
import argparse
import copy
import ctypes
import difflib
import gc
import os
import os.path as osp
import signal
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple

import mmengine
import numpy as np
import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.evaluator import BaseMetric, DumpResults
from mmengine.runner import Runner

from ..engine.config import ConfigError, build_runner, load_config
from ..engine.validate import check_config
from ..engine.work_dir import work_dir_lock
from ..utils import UserError, atomic_save_bytes, refuse_overwrite
from . import run

# Harmless log lines that bury the useful ones: one per parameter without
# weight decay, mmengine's own deprecations, a metric that computes nothing.
KNOWN_NOISE = ('paramwise_options -- ', '"FileClient" will be deprecated',
               '"HardDiskBackend" is the alias',
               'The prefix is not set in metric class DumpResults')


class CfgOptionsAction(DictAction):
    """``DictAction`` that reports a malformed ``KEY=VALUE`` as usage."""

    def __call__(self, parser, namespace, values, option_string=None):
        for kv in values or ():
            if '=' not in kv or kv.startswith('='):
                raise argparse.ArgumentError(
                    self, f'{kv!r} is not KEY=VALUE; write e.g. '
                    'train_cfg.max_epochs=2 or '
                    'model.backbone.arch=768/32 (no spaces around "=").')
        super().__call__(parser, namespace, values, option_string)


def _parser(test: bool) -> argparse.ArgumentParser:
    """The command line of ``tools/test.py`` or ``tools/train.py``."""
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a checkpoint' if test else
        'Train a model')
    add = parser.add_argument
    add('config', help='config file')
    if test:
        add('checkpoint', help='checkpoint file')
    add('--work-dir', help='the dir for logs (and checkpoints when '
        'training)')
    add('--amp', action='store_true',
        help='mixed precision: fp16 (or optim_wrapper.dtype) on GPU, bf16 '
        'on CPU')
    if test:
        add('--out', help='FILE.npz: compact predictions (arrays '
            'pred_label, pred_score, gt_label in dataset order); .pkl: '
            "mmpretrain's full samples (large)")
        add('--force', action='store_true', help='overwrite OUT if it exists')
        add('--out-item', choices=['metrics', 'pred'],
            help='dump the metrics or the predictions (default) to --out')
        add('--show-dir', help='save images with their predictions here')
        add('--show', action='store_true',
            help='show each image with its prediction (needs a display)')
        add('--interval', type=int, default=1,
            help='visualize every INTERVAL-th sample')
        add('--wait-time', type=float, default=2,
            help='seconds each --show window stays open')
        add('--tta', action='store_true', help="the config's tta_model "
            'and tta_pipeline, else the mean score of image and flip')
    else:
        add('--resume', nargs='?', type=str, const='auto',
            help="resume from PATH, or the work dir's latest checkpoint")
        add('--no-validate', action='store_true',
            help='do not evaluate the checkpoints during training')
        add('--auto-scale-lr', action='store_true',
            help='scale the lr by batch size / auto_scale_lr.base_batch_size')
        add('--no-persistent-workers', action='store_true',
            help='disable persistent_workers in the dataloaders')
    add('--no-pin-memory', action='store_true',
        help='disable pin_memory in the dataloaders')
    add('--cfg-options', nargs='+', action=CfgOptionsAction,
        help='KEY=VALUE overrides, e.g. train_cfg.max_epochs=2 (no spaces)')
    add('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    # torchrun passes --local-rank (torch.distributed.launch --local_rank).
    add('--local_rank', '--local-rank', type=int, default=0)
    return parser


def merge_cfg_options(cfg: Config, options: Optional[dict]) -> None:
    """Merge ``--cfg-options``, refusing keys whose parents do not exist.

    A new leaf (``model.backbone.drop_path_rate``) is allowed; a misspelt
    parent (``trian_cfg.max_epochs``) is an error naming the closest keys.
    """
    for key in options or {}:
        node, parts = cfg._cfg_dict, key.split('.')
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, (list, tuple)) and part.isdigit() \
                    and int(part) < len(node):
                node = node[int(part)]
            else:
                close = difflib.get_close_matches(
                    part, list(node) if isinstance(node, dict) else [], n=3)
                hint = f' Did you mean {", ".join(close)}?' if close else ''
                raise ConfigError(
                    f'--cfg-options {key}=...: the config has no '
                    f'{".".join(parts[:depth + 1])!r}.{hint}')
    if options:
        cfg.merge_from_dict(options)


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply the arguments of ``tools/train.py`` or ``tools/test.py``."""
    test = 'checkpoint' in args
    if test:
        cfg.load_from, cfg.resume = args.checkpoint, False
        if args.amp:
            cfg.test_cfg = cfg.get('test_cfg') or ConfigDict()
            cfg.test_cfg.fp16 = True
        if args.show or args.show_dir is not None:
            cfg.setdefault('default_hooks', ConfigDict())['visualization'] = \
                ConfigDict(type='VisualizationHook', enable=True,
                           show=args.show, wait_time=args.wait_time,
                           out_dir=args.show_dir, interval=args.interval)
        if args.tta:
            _use_tta(cfg)
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='TestProgressBarHook')
        ]
    else:
        if args.no_validate:
            cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
        if args.amp:
            cfg.optim_wrapper.type = 'MixedPrecisionOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        if args.resume is not None:
            cfg.resume = True
            cfg.load_from = None if args.resume == 'auto' else args.resume
        if args.auto_scale_lr:
            if 'auto_scale_lr' not in cfg:
                raise ConfigError(
                    '--auto-scale-lr: the config has no auto_scale_lr; add '
                    'auto_scale_lr = dict(base_batch_size=N) with the batch '
                    'size its lr was tuned for.')
            cfg.auto_scale_lr.enable = True
    cfg.launcher = args.launcher
    if not torch.cuda.is_available():
        cfg.setdefault('env_cfg', ConfigDict()).setdefault(
            'dist_cfg', ConfigDict())['backend'] = 'gloo'
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    defaults = dict(
        pin_memory=torch.cuda.is_available() and not args.no_pin_memory,
        collate_fn=dict(type='default_collate'))
    if not test:
        defaults['persistent_workers'] = not args.no_persistent_workers
    loaders = ('test_dataloader', ) if test else (
        'train_dataloader', 'val_dataloader', 'test_dataloader')
    for field in loaders:
        if cfg.get(field) is not None:
            cfg[field] = ConfigDict(defaults, **cfg[field])
    merge_cfg_options(cfg, args.cfg_options)
    for field in loaders:
        # persistent_workers needs workers.
        if cfg.get(field) is not None and not cfg[field].get('num_workers'):
            cfg[field].persistent_workers = False
    return cfg


class DumpPredictions(BaseMetric):
    """``tools/test.py --out FILE.npz``: labels and scores as arrays, about
    60 bytes per image for 10 classes (``DumpResults`` pickles whole
    samples). ``pred_label`` is the argmax of ``pred_score``, as ``Accuracy``
    counts it (mmpretrain's TTA merges the scores, keeps one view's label).
    """
    default_prefix = 'dump'

    def __init__(self, out_file_path: str) -> None:
        super().__init__()
        self.out_file_path = out_file_path

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            gt = sample.get('gt_label')
            self.results.append(
                (sample['pred_score'].cpu(),
                 -1 if gt is None or gt.numel() != 1 else int(gt)))

    def compute_metrics(self, results: list) -> dict:
        scores, gts = zip(*results)
        scores = torch.stack(scores).numpy()

        def write(path: str) -> None:
            with open(path, 'wb') as f:
                np.savez(f, pred_label=scores.argmax(1), pred_score=scores,
                         gt_label=np.array(gts))

        atomic_save_bytes(self.out_file_path, write)
        return {}


def _use_tta(cfg: Config) -> None:
    """mmpretrain's ``--tta``: wrap the model, swap the test pipeline."""
    pipeline = cfg.test_dataloader.dataset.pipeline
    if 'tta_pipeline' not in cfg:
        cfg.tta_pipeline = copy.deepcopy(pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[[
                dict(type='RandomFlip', prob=1.),
                dict(type='RandomFlip', prob=0.)
            ], [pipeline[-1]]])
    tta_model = cfg.get('tta_model', dict(type='AverageClsScoreTTA'))
    cfg.model = ConfigDict(**tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def _exit_with_launcher(launcher: str) -> None:
    """Make a torchrun worker die with its agent (Linux only): a ``kill
    -9`` of torchrun would leave orphans training in the work dir."""
    if launcher != 'pytorch' or not sys.platform.startswith('linux'):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # The agent died before the call above.
        os.kill(os.getpid(), signal.SIGTERM)


def _prepare(argv: Optional[List[str]],
             test: bool) -> Tuple[argparse.Namespace, Config]:
    """Parse the command line and merge it into the config, checked
    before anything is written."""
    args = _parser(test).parse_args(argv)
    if test and args.out_item and not args.out:
        raise ConfigError('--out-item needs --out FILE to write to.')
    if test and args.out:
        if args.out_item != 'metrics' and not args.out.endswith(
                ('.npz', '.pkl', '.pickle')):
            raise ConfigError(
                f'--out {args.out}: predictions are written to FILE.npz '
                '(compact arrays) or FILE.pkl (full samples); for the '
                'metrics add --out-item metrics.')
        refuse_overwrite(args.out, args.force)
    _exit_with_launcher(args.launcher)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    base = load_config(args.config)
    cfg = merge_args(copy.deepcopy(base), args)
    loaders = ('test_dataloader', ) if test else ('train_dataloader',
                                                   'val_dataloader')
    check_config(cfg, base, args.cfg_options, args.config,
                 [f for f in loaders if cfg.get(f) is not None])
    return args, cfg


def _build_runner(cfg: Config) -> Runner:
    runner = build_runner(cfg)
    runner.logger.addFilter(
        lambda record: not str(record.msg).startswith(KNOWN_NOISE))
    return runner


def _train(argv: Optional[List[str]]) -> None:
    _, cfg = _prepare(argv, test=False)
    with work_dir_lock(cfg.work_dir):
        _build_runner(cfg).train()


def _test(argv: Optional[List[str]]) -> None:
    args, cfg = _prepare(argv, test=True)
    runner = _build_runner(cfg)
    if args.out and args.out_item in ('pred', None):
        dump = DumpPredictions if args.out.endswith('.npz') else DumpResults
        runner.test_evaluator.metrics.append(dump(out_file_path=args.out))
    metrics = runner.test()
    if args.out and args.out_item == 'metrics':
        mmengine.dump(metrics, args.out)


def _shut_down_distributed() -> None:
    """Tear the process group down while the interpreter is whole: at
    interpreter shutdown gloo's threads may free tensors after Python is
    gone and abort a successful run. The runner's cycles (holding the DDP
    model and its process group) are collected first."""
    if not (torch.distributed.is_available()
            and torch.distributed.is_initialized()):
        return
    gc.collect()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    gc.collect()


def _run(main: Callable, argv: Optional[List[str]]) -> int:
    # Training and testing catch only UserError: a bug keeps its traceback.
    status = run(main, argv, errors=(UserError, ))
    # Only after success: after a failure the other ranks may never reach
    # the barrier, and torchrun stops them anyway.
    if status == 0:
        _shut_down_distributed()
    return status


def train(argv: Optional[List[str]] = None) -> int:
    """Run ``tools/train.py``; return the exit status."""
    return _run(_train, argv)


def test(argv: Optional[List[str]] = None) -> int:
    """Run ``tools/test.py``; return the exit status."""
    return _run(_test, argv)
