# Copyright (c) convmixer_mm contributors. All rights reserved.
from .onnx_export import (ExportError, build_classifier, check_export_args,
                          export_onnx, opset_of, verify_onnx)

__all__ = [
    'ExportError', 'build_classifier', 'check_export_args', 'export_onnx',
    'opset_of', 'verify_onnx'
]
