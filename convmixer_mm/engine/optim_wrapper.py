# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Mixed precision training on any device: fp16/bf16 on GPU, bf16 on CPU."""
from typing import Optional, Union

import torch
from mmengine.device import (is_cuda_available, is_mlu_available,
                             is_musa_available, is_npu_available)
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from mmpretrain.registry import OPTIM_WRAPPERS


def has_accelerator() -> bool:
    """Whether mmengine sees a GPU, NPU, MLU or MUSA device."""
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


@OPTIM_WRAPPERS.register_module()
class MixedPrecisionOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` that also runs on CPU.

    On an accelerator it is mmengine's ``AmpOptimWrapper`` (fp16 with a
    loss scaler by default, or ``dtype='bfloat16'``), which refuses to
    build on a CPU-only machine. There this one autocasts to bfloat16,
    which needs no loss scaling (``loss_scale`` is unused), and steps like
    a plain ``OptimWrapper``: configs that ask for AMP train anywhere.
    """

    def __init__(self,
                 loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Optional[Union[str, torch.dtype]] = None,
                 **kwargs) -> None:
        if has_accelerator():
            super().__init__(loss_scale=loss_scale, dtype=dtype, **kwargs)
            return
        if dtype not in (None, 'bfloat16', torch.bfloat16):
            raise ValueError(
                f'dtype={dtype!r}: CPU autocast supports only bfloat16. '
                'Remove optim_wrapper.dtype or set it to "bfloat16".')
        OptimWrapper.__init__(self, **kwargs)
        self.cast_dtype = torch.bfloat16
        self.loss_scaler = None
        self._scale_update_param = None

    def _base(self):
        """``AmpOptimWrapper``'s methods where there is a loss scaler, else
        the plain ``OptimWrapper``'s."""
        if self.loss_scaler is None:
            return super(AmpOptimWrapper, self)
        return super()

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        self._base().backward(loss, **kwargs)

    def step(self, **kwargs) -> None:
        self._base().step(**kwargs)

    def state_dict(self) -> dict:
        return self._base().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        # A state saved on an accelerator has a loss scaler's.
        if self.loss_scaler is None:
            state_dict = {
                k: v for k, v in state_dict.items() if k != 'loss_scaler'
            }
        self._base().load_state_dict(state_dict)
