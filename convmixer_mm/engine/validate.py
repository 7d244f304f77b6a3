# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Check a merged config before the runner writes anything.

mmengine finds a misspelt key, a value of the wrong type or a missing data
directory only when it builds the part concerned, after it has created the
work dir, its log and the dumped config. These checks come first, and say
whether the bad value came from ``--cfg-options`` or the config file.
"""
import difflib
import inspect
import os.path as osp
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence

from mmengine.config import Config
from mmengine.registry import Registry, init_default_scope
from mmengine.runner import (EpochBasedTrainLoop, IterBasedTrainLoop, TestLoop,
                             ValLoop)
from torch.utils.data import DataLoader

import mmpretrain.registry
from ..datasets import DataNotFoundError
from .config import ConfigError

# Keys that mmengine's builders take out before calling the class.
_BUILDER_KEYS = {
    'type', '_scope_', 'convert_to_iter_based', 'by_epoch', 'dataset',
    'sampler', 'batch_sampler', 'collate_fn', 'worker_init_fn',
    'num_batch_per_epoch', 'disable_subprocess_warning', 'constructor',
    'paramwise_cfg'
}
_LOOPS = {'val_cfg': ValLoop, 'test_cfg': TestLoop}
_BUILD_ERRORS = (KeyError, TypeError, ValueError, AssertionError)


def _consumers(path: str, node: dict) -> List[Callable]:
    """The classes a config node is passed to, if known."""
    kind = node.get('type')
    if isinstance(kind, str):
        found = [
            reg.get(kind) for reg in vars(mmpretrain.registry).values()
            if isinstance(reg, Registry)
        ]
        return [f for f in found if f is not None]
    if kind is not None:
        return [kind]
    if path.endswith('_dataloader'):
        return [DataLoader]
    if path == 'train_cfg':
        by_epoch = node.get('by_epoch', True)
        return [EpochBasedTrainLoop if by_epoch else IterBasedTrainLoop]
    return [_LOOPS[path]] if path in _LOOPS else []


def _parameters(fn: Callable) -> Optional[Dict[str, inspect.Parameter]]:
    """The keyword arguments ``fn`` takes, following ``**kwargs`` up the
    class hierarchy; None if they cannot be known."""
    params: Dict[str, inspect.Parameter] = {}
    inits = [
        k.__dict__['__init__'] for k in fn.__mro__ if '__init__' in k.__dict__
    ] if isinstance(fn, type) else [fn]
    for init in inits:
        try:
            found = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        for p in found:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                params.setdefault(p.name, p)
        if all(p.kind != p.VAR_KEYWORD for p in found):
            return params
    return None


def _expected(annotation: Any) -> Optional[tuple]:
    """The Python types a scalar annotation allows; None for others."""
    if typing.get_origin(annotation) is typing.Union:
        allowed = [
            _expected(a) for a in typing.get_args(annotation)
            if a is not type(None)
        ]
        return None if None in allowed else sum(allowed, (type(None), ))
    return {bool: (bool, ), int: (int, ), float: (int, float)}.get(annotation)


def _type_ok(value: Any, allowed: Sequence[type]) -> bool:
    # bool is an int to Python, but True is no epoch count.
    return isinstance(value, tuple(allowed)) and (bool in allowed or
                                                  not isinstance(value, bool))


def _accepted(path: str, node: Any) -> Optional[Dict[str, Any]]:
    """The arguments the classes receiving ``node`` take; None if
    unknown."""
    accepted = [_parameters(c) for c in _consumers(path, node)] \
        if isinstance(node, dict) else []
    if not accepted or None in accepted:
        return None
    return {k: v for found in accepted for k, v in found.items()}


def _node(cfg: Config, key: str) -> Any:
    """The value at the dotted ``key`` (list indices allowed), or None."""
    node: Any = cfg._cfg_dict
    for part in key.split('.') if key else ():
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, (list, tuple)) and part.isdigit():
            node = node[int(part)] if int(part) < len(node) else None
        else:
            return None
    return node


class _Checker:
    """Checks the nodes of a merged config, blaming a bad value on its
    source."""

    def __init__(self, cfg: Config, options: Optional[dict],
                 config_file: str) -> None:
        self.cfg = cfg
        self.options = options or {}
        self.config_file = config_file

    def source(self, key: str) -> Optional[str]:
        """The ``--cfg-options`` entry that set ``key`` (or a parent)."""
        for option, value in self.options.items():
            if key == option or key.startswith(option + '.'):
                return f'--cfg-options {option}={value}'
        return None

    def fail(self, key: str, value: Any, problem: str) -> None:
        given = self.source(key)
        if given is None:
            raise ConfigError(
                f'{key}={value!r} in the config file {self.config_file}: '
                f'{problem}. Fix the config file.')
        raise ConfigError(f'{given}: {problem}.')

    def check_node(self,
                   path: str,
                   node: Any,
                   keys: Optional[Sequence[str]] = None) -> None:
        """Check ``keys`` (default: all) of ``node`` against the classes
        that receive it."""
        params = _accepted(path, node)
        if params is None:
            return
        for key in keys if keys is not None else list(node):
            full = f'{path}.{key}'
            if key not in params and key not in _BUILDER_KEYS:
                close = difflib.get_close_matches(key, list(params), n=3)
                names = ', '.join(c.__name__ for c in _consumers(path, node))
                self.fail(
                    full, node[key], f'{names} takes no argument {key!r}; '
                    f'it takes {", ".join(close or sorted(params))}')
            allowed = _expected(params[key].annotation) \
                if key in params else None
            if allowed and not _type_ok(node[key], allowed):
                types = [t.__name__ for t in allowed if t is not type(None)]
                self.fail(full, node[key],
                          f'{key} must be of type {" or ".join(types)}')

    def check_options(self, base: Config) -> None:
        """A new key that looks like an existing one, and that the class
        receiving it does not take, is a typo; a value must have the type
        of the value it replaces."""
        for key, value in self.options.items():
            parent, _, leaf = key.rpartition('.')
            node = _node(base, parent)
            if not isinstance(node, dict):
                continue
            params = _accepted(parent, _node(self.cfg, parent)) or {}
            close = difflib.get_close_matches(leaf, list(node), n=3,
                                              cutoff=0.8)
            if leaf not in node and leaf not in params and close:
                raise ConfigError(
                    f'--cfg-options {key}={value}: the config has no '
                    f'{key!r}. Did you mean '
                    f'{", ".join(f"{parent}.{c}" for c in close)}?')
            old = node.get(leaf)
            kind = next((k for k in (bool, int, float) if isinstance(old, k)),
                        None)
            # None means "the default" (a random seed, no limit, ...).
            if value is not None and kind and not _type_ok(
                    value, _expected(kind)):
                raise ConfigError(
                    f'--cfg-options {key}={value}: {key} must be of type '
                    f'{kind.__name__}, like the config\'s {old!r}.')
            self.check_node(parent, _node(self.cfg, parent), [leaf])

    def check_data(self, fields: Sequence[str]) -> None:
        """Each data set's directories and annotation file exist."""
        for field in fields:
            loader = self.cfg.get(field)
            if not isinstance(loader, dict) or not isinstance(
                    loader.get('dataset'), dict):
                continue
            self.check_node(field, loader)
            dataset_cfg = loader['dataset']
            self.check_node(f'{field}.dataset', dataset_cfg)
            try:
                dataset = mmpretrain.registry.DATASETS.build(
                    dict(dataset_cfg, lazy_init=True))
            except _BUILD_ERRORS as e:
                self.fail(f'{field}.dataset', dataset_cfg.get('type'),
                          f'the data set does not build: {e}')
            if getattr(dataset, 'download', False):
                continue
            prefixes = getattr(dataset, 'data_prefix', {}) or {}
            missing = [
                path for path in (dataset.data_root, dataset.ann_file,
                                  *prefixes.values())
                if path and not osp.exists(path)
            ]
            if not missing:
                continue
            given = self.source(f'{field}.dataset.data_root') or \
                f'the config file {self.config_file}'
            message = (f'{missing[0]!r} does not exist: put the data set '
                       f'there or set {field}.dataset.data_root=DIR with '
                       '--cfg-options')
            try:
                # The data set's own message may say how to install it.
                dataset.full_init()
            except DataNotFoundError as e:
                message = str(e).rstrip('.')
            except OSError:
                pass
            raise DataNotFoundError(
                f'{message} ({field}.dataset from {given}).')

    def check_model(self, base: Config) -> None:
        """Build the model once, blaming a failure on its source."""
        try:
            mmpretrain.registry.MODELS.build(self.cfg.model)
            return
        except _BUILD_ERRORS as e:
            error = e
        if self.options:
            try:
                mmpretrain.registry.MODELS.build(base.model)
            except _BUILD_ERRORS:
                pass
            else:
                options = ' '.join(f'{k}={v}'
                                   for k, v in self.options.items())
                raise ConfigError(
                    f'the model does not build with --cfg-options '
                    f'{options}: {error}') from None
        raise ConfigError(
            f'the model of the config file {self.config_file} does not '
            f'build: {str(error).rstrip(".")}. Fix the config file.') from None


def check_config(cfg: Config, base: Config, options: Optional[dict],
                 config_file: str, fields: Sequence[str]) -> None:
    """Check ``cfg`` (the config with the command line merged in) before
    anything is written: against ``base`` (before ``options``, the
    ``--cfg-options``, were merged), the classes receiving each node, the
    data of the dataloaders in ``fields`` and the model.

    Raises:
        ConfigError: A key is misspelt or a value has the wrong type.
        DataNotFoundError: A data directory or file does not exist.
    """
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    checker = _Checker(cfg, options, config_file)
    checker.check_options(base)
    for loop in ('train_cfg', 'val_cfg', 'test_cfg'):
        if isinstance(cfg.get(loop), dict):
            checker.check_node(loop, cfg[loop])
    checker.check_data(fields)
    checker.check_model(base)
