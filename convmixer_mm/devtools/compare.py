# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Train several configs on one budget and tabulate the results."""
import copy
import json
import os
import os.path as osp
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..apis.complexity import count_complexity
from ..engine.config import build_runner
from .curves import Curve, epoch_curves, load_scalars, plot_curves


@dataclass
class Budget:
    """The training every model gets: ``epochs`` (schedules that end at
    the config's ``max_epochs`` end there), the first ``train_size`` and
    ``val_size`` images (None: all) and the seed."""
    epochs: int
    train_size: Optional[int] = None
    val_size: Optional[int] = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ('epochs', 'train_size', 'val_size'):
            value = getattr(self, name)
            if (value is not None or name == 'epochs') and (
                    not isinstance(value, int) or value <= 0):
                raise ValueError(f'{name}={value!r} must be a positive int.')

    def describe(self) -> str:
        train, val = ('all' if n is None else f'the first {n}'
                      for n in (self.train_size, self.val_size))
        return (f'{self.epochs} epochs on {train} training images, '
                f'validated on {val} validation images, seed {self.seed}')


@dataclass
class RunResult:
    """What one config achieved on the budget."""
    name: str
    params: int
    flops: int
    input_shape: List[int]
    accuracy: float
    train_images_per_s: float
    wall_time_s: float
    curves: Dict[str, Curve] = field(default_factory=dict)


class TrainSpeedHook(Hook):
    """Time the training epochs (without validation) and count images."""

    # Before the checkpoint hook's after_train_epoch, so saving is not timed.
    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self.images, self.seconds, self.start = 0, 0., 0.

    def before_train_epoch(self, runner) -> None:
        self.start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        self.images += len(data_batch['inputs'])

    def after_train_epoch(self, runner) -> None:
        self.seconds += time.perf_counter() - self.start


def apply_budget(cfg: Config, budget: Budget, work_dir: str) -> Config:
    """A copy of ``cfg`` that trains on ``budget`` into ``work_dir``,
    validating after every epoch and keeping the last checkpoint only."""
    cfg = copy.deepcopy(cfg)
    old_epochs = cfg.train_cfg.get('max_epochs')
    if not cfg.train_cfg.get('by_epoch', True) or old_epochs is None:
        raise ValueError('The comparison needs epoch-based configs '
                         '(train_cfg.by_epoch=True with max_epochs).')
    cfg.work_dir = work_dir
    cfg.train_cfg.update(max_epochs=budget.epochs, val_interval=1)
    schedulers = cfg.get('param_scheduler') or []
    if isinstance(schedulers, dict):
        schedulers = [schedulers]
    for scheduler in schedulers:
        if scheduler.get('end') == old_epochs:
            scheduler['end'] = budget.epochs
    cfg.train_dataloader.dataset.indices = budget.train_size
    cfg.val_dataloader.dataset.indices = budget.val_size
    cfg.randomness = dict(seed=budget.seed, deterministic=False)
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=budget.epochs, max_keep_ckpts=1)
    return cfg


def train_one(cfg: Config, name: str, budget: Budget,
              work_dir: str) -> RunResult:
    """Train one config, labelled ``name``, on the budget in ``work_dir``:
    params and FLOPs at the data's input size, last validation top-1,
    training throughput and wall time."""
    runner = build_runner(apply_budget(cfg, budget, work_dir))
    speed = TrainSpeedHook()
    runner.register_hook(speed)
    start = time.perf_counter()
    runner.train()
    wall_time = time.perf_counter() - start
    model = runner.model.module if is_model_wrapper(
        runner.model) else runner.model
    input_shape = list(runner.val_dataloader.dataset[0]['inputs'].shape)
    complexity = count_complexity(model, input_shape)
    curves = epoch_curves(
        load_scalars(runner.log_dir), ('loss', 'accuracy/top1'))
    return RunResult(
        name=name, params=complexity['params'], flops=complexity['flops'],
        input_shape=input_shape, accuracy=curves['accuracy/top1'][1][-1],
        train_images_per_s=speed.images / speed.seconds,
        wall_time_s=wall_time, curves=curves)


def markdown_table(results: Sequence[RunResult], budget: Budget) -> str:
    """The results as a markdown table, with the budget stated."""
    lines = [
        '| Model | Params | FLOPs | Top-1 (%) | Train img/s | Wall time |',
        '|---|---:|---:|---:|---:|---:|',
    ]
    for r in results:
        lines.append(f'| {r.name} | {r.params / 1e6:.3f}M | '
                     f'{r.flops / 1e6:.1f}M | {r.accuracy:.2f} | '
                     f'{r.train_images_per_s:.0f} | '
                     f'{r.wall_time_s / 60:.1f} min |')
    shape = 'x'.join(str(s) for s in results[0].input_shape)
    lines.append(f'\nBudget: {budget.describe()}. FLOPs are multiply-adds of '
                 f'one {shape} image; img/s counts training steps only '
                 f'(data loading included, validation excluded) with '
                 f'{torch.get_num_threads()} CPU threads; wall time '
                 'includes validation after every epoch.')
    return '\n'.join(lines) + '\n'


def compare(configs: Sequence[str],
            budget: Budget,
            work_dir: str,
            out_dir: Optional[str] = None) -> List[RunResult]:
    """Train each config in ``work_dir/<config name>`` on the same budget;
    write ``comparison.md`` (the table), ``comparison.png`` (per-epoch
    train loss and val top-1 of every model) and ``comparison.json`` into
    ``out_dir`` (default: ``work_dir``)."""
    if not configs:
        raise ValueError('Pass at least one config to compare.')
    missing = [c for c in configs if not osp.isfile(c)]
    if missing:
        raise FileNotFoundError(f'Config(s) {missing} do not exist.')
    names = [osp.splitext(osp.basename(c))[0] for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f'Config names {names} must be unique: they name '
                         'the work dirs and the table rows.')
    out_dir = out_dir or work_dir
    os.makedirs(out_dir, exist_ok=True)
    results = [
        train_one(Config.fromfile(c), name, budget, osp.join(work_dir, name))
        for c, name in zip(configs, names)
    ]
    with open(osp.join(out_dir, 'comparison.md'), 'w') as f:
        f.write(markdown_table(results, budget))
    with open(osp.join(out_dir, 'comparison.json'), 'w') as f:
        json.dump(dict(budget=asdict(budget),
                       results=[asdict(r) for r in results]), f, indent=2)
    plot_curves({r.name: r.curves for r in results},
                osp.join(out_dir, 'comparison.png'),
                title=f'Same budget: {budget.describe()}')
    return results
