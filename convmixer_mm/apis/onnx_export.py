# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Export a classifier to ONNX and check the graph against PyTorch."""
import os
import os.path as osp
import warnings
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmpretrain.registry import MODELS
from ..engine.checkpoint import load_checkpoint_file, load_weights
from ..engine.config import load_config
from ..utils import UserError, atomic_save_bytes, refuse_overwrite

# The TorchScript exporter covers 11..17, the dynamo exporter 18 and up;
# 23 is the newest opset torch 2.15 emits (onnxruntime 1.31 runs it).
MIN_OPSET, DYNAMO_MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 11, 18, 23, 18


class ExportError(UserError, RuntimeError):
    """The exported graph disagrees with PyTorch or does not run."""


class _Logits(nn.Module):
    """Map a normalized image batch to class scores, for tracing."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.classifier(inputs, mode='tensor')


def build_classifier(config: Union[str, Config],
                     checkpoint: Optional[str] = None) -> nn.Module:
    """Build the model of a config (file or object) on CPU in eval mode,
    with the weights of ``checkpoint`` (default: random), loaded strictly."""
    if isinstance(config, str):
        config = load_config(config)
    # Read the checkpoint before building, so a wrong path fails at once.
    state = None if checkpoint is None else load_checkpoint_file(checkpoint)
    model_cfg = config.model.copy()
    model_cfg.setdefault('data_preprocessor',
                         config.get('data_preprocessor', None))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(model_cfg)
    if state is not None:
        load_weights(model, state, name=checkpoint)
    return model.eval()


def chw_shape(model: nn.Module, shape: Sequence[int]) -> Tuple[int, ...]:
    """``(C, H, W)`` from ``H``, ``(H, W)`` or ``(C, H, W)``; C defaults to
    the input channels of the model's first conv."""
    shape = tuple(shape) * (2 if len(shape) == 1 else 1)
    if len(shape) == 2:
        conv = next((m for m in model.modules()
                     if isinstance(m, nn.Conv2d)), None)
        if conv is None:
            raise ValueError('The model has no Conv2d to infer the input '
                             'channels from: pass them in the shape.')
        shape = (conv.in_channels, ) + shape
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f'input_shape={shape} must be H, (H, W) or '
                         '(C, H, W) of positive ints.')
    return shape


def check_export_args(out_file: str, opset: int, force: bool) -> str:
    """Check the output path and opset before any work; return the
    absolute output path."""
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(
            f'opset={opset!r} is not supported: use an int in '
            f'[{MIN_OPSET}, {MAX_OPSET}] ({DYNAMO_MIN_OPSET}+ uses the '
            f'dynamo exporter, below it the TorchScript one).')
    out_file = osp.abspath(out_file)
    if not out_file.endswith('.onnx'):
        raise ValueError(f'Output {out_file!r} must end with .onnx.')
    if osp.isdir(out_file):
        raise IsADirectoryError(
            f'Output {out_file!r} is a directory: name an .onnx file.')
    refuse_overwrite(out_file, force)
    out_dir = osp.dirname(out_file)
    if not osp.isdir(out_dir):
        raise FileNotFoundError(
            f'Output directory {out_dir!r} does not exist: create it first.')
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f'Output directory {out_dir!r} is not '
                              'writable: choose another output path.')
    return out_file


def _export(module: nn.Module, example: torch.Tensor, path: str, opset: int,
            dynamic_batch: bool) -> None:
    kwargs = dict(
        opset_version=opset, input_names=['input'], output_names=['logits'])
    if opset >= DYNAMO_MIN_OPSET:
        batch = {'inputs': {0: torch.export.Dim('batch')}}
        torch.onnx.export(
            module, (example, ), path, dynamo=True, external_data=False,
            dynamic_shapes=batch if dynamic_batch else None, verbose=False,
            **kwargs)
        return
    axes = {'input': {0: 'batch'}, 'logits': {0: 'batch'}}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated, but the dynamo one writes
        # opset 18+ only: its down-conversion fails on even kernels' Pad.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(
            module, (example, ), path, dynamo=False,
            dynamic_axes=axes if dynamic_batch else None, **kwargs)


def verify_onnx(onnx_file: str, model: nn.Module, input_shape: Sequence[int],
                batch_sizes: Sequence[int], atol: float) -> Dict[int, float]:
    """The max absolute difference of the ONNX file's logits (run with
    onnxruntime) from ``model``'s, on a random batch of each size; raise
    :class:`ExportError` if one fails to run or differs by over ``atol``."""
    import onnxruntime as ort

    # onnxruntime's exceptions share no base class but Exception.
    try:
        session = ort.InferenceSession(
            onnx_file, providers=['CPUExecutionProvider'])
    except Exception as e:  # noqa: BLE001
        raise ExportError(
            f'onnxruntime cannot load {onnx_file}: {e}') from None
    generator = torch.Generator().manual_seed(0)
    diffs = {}
    for batch in batch_sizes:
        inputs = torch.randn(batch, *input_shape, generator=generator)
        with torch.no_grad():
            expected = model(inputs, mode='tensor').numpy()
        try:
            (actual, ) = session.run(['logits'], {'input': inputs.numpy()})
        except Exception as e:  # noqa: BLE001
            raise ExportError(
                f'onnxruntime cannot run {onnx_file} at batch size {batch}: '
                f'{e}. Export with --dynamic-batch to vary the batch.'
            ) from None
        diffs[batch] = float(np.abs(actual - expected).max())
        if not diffs[batch] <= atol:
            raise ExportError(
                f'ONNX logits differ from PyTorch by {diffs[batch]:.3g} (> '
                f'{atol}) at batch size {batch}.')
    return diffs


def export_onnx(model: nn.Module,
                out_file: str,
                input_shape: Sequence[int],
                opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False,
                atol: float = 1e-4,
                force: bool = False) -> Dict[int, float]:
    """Export a classifier's logits to ONNX, checked with onnxruntime.

    The graph takes a normalized ``(B, C, H, W)`` float batch ``input``
    (``input_shape`` as :func:`chw_shape` reads it) and returns
    ``logits``; the preprocessor's mean and std go in its metadata. The
    batch is 1, or with ``dynamic_batch`` dynamic (checked at 1 and 3).
    The file is renamed into place only once onnxruntime agrees with
    PyTorch to ``atol``, so a failure leaves nothing behind. Returns the
    max absolute difference per checked batch size.
    """
    out_file = check_export_args(out_file, opset, force)
    if not getattr(model, 'with_head', False):
        raise ValueError('Only classifiers with a head can be exported: the '
                         'config needs model.head.')
    input_shape = chw_shape(model, input_shape)
    model = model.eval()
    # A batch of 2 keeps torch.export from fixing a dynamic batch to 1.
    example = torch.zeros(2 if dynamic_batch else 1, *input_shape)
    diffs: Dict[int, float] = {}

    def export_and_verify(tmp_file: str) -> None:
        _export(_Logits(model).eval(), example, tmp_file, opset,
                dynamic_batch)
        _add_metadata(tmp_file, model)
        diffs.update(
            verify_onnx(tmp_file, model, input_shape,
                        (1, 3) if dynamic_batch else (1, ), atol))

    atomic_save_bytes(out_file, export_and_verify)
    return diffs


def _add_metadata(onnx_file: str, model: nn.Module) -> None:
    """Record the normalization the graph expects in its metadata."""
    import onnx

    proto = onnx.load(onnx_file)
    preprocessor = getattr(model, 'data_preprocessor', None)
    for key in ('mean', 'std'):
        value = getattr(preprocessor, key, None)
        if isinstance(value, torch.Tensor):
            entry = proto.metadata_props.add()
            entry.key = key
            entry.value = str([round(v, 4) for v in value.flatten().tolist()])
    onnx.save(proto, onnx_file)


def opset_of(onnx_file: str) -> Tuple[int, Dict[str, str]]:
    """The default-domain opset and the metadata of an ONNX file."""
    import onnx

    proto = onnx.load(onnx_file)
    opset = next(o.version for o in proto.opset_import
                 if o.domain in ('', 'ai.onnx'))
    return opset, {p.key: p.value for p in proto.metadata_props}
