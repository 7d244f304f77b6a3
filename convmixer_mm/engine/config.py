# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Read a config and build its runner: what the tools and the library
share (the command lines only add their arguments on top)."""
import os.path as osp

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..utils import UserError


class ConfigError(UserError, ValueError):
    """A config file or ``--cfg-options`` entry is wrong."""


def load_config(path: str) -> Config:
    """Read a config file, raising :class:`ConfigError` if it is missing."""
    if not osp.isfile(path):
        raise ConfigError(
            f'config {path!r} does not exist: pass a config file such as '
            'configs/convmixer/convmixer-128-4-p4_1xb128_fashion-mnist.py.')
    return Config.fromfile(path)


def build_runner(cfg: Config) -> Runner:
    """Build ``cfg.runner_type`` if set, else mmengine's ``Runner``."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def apply_tensorboard_switch(cfg: Config) -> Config:
    """Log to TensorBoard as well when the config sets ``use_tensorboard``.

    With ``use_tensorboard = True`` in a config (or ``--cfg-options
    use_tensorboard=True``), mmengine's ``TensorboardVisBackend`` is added
    next to the visualizer's other backends, so ``vis_data/scalars.json``
    (and ``plot_curves.py``) keeps working and event files appear beside
    it. ``cfg`` is changed in place and returned.

    Raises:
        ConfigError: TensorBoard is not installed.
    """
    if not cfg.get('use_tensorboard', False):
        return cfg
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            'use_tensorboard=True needs TensorBoard: pip install '
            "-e '.[tensorboard]' (or pip install tensorboard), or set "
            'use_tensorboard=False.') from None
    visualizer = cfg.setdefault('visualizer',
                                dict(type='UniversalVisualizer'))
    backends = list(
        visualizer.get('vis_backends') or [dict(type='LocalVisBackend')])
    if not any(b.get('type') == 'TensorboardVisBackend' for b in backends):
        backends.append(dict(type='TensorboardVisBackend'))
    visualizer['vis_backends'] = backends
    return cfg
