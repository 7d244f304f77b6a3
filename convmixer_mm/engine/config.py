# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Read a config and build its runner, for the tools and the library."""
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

