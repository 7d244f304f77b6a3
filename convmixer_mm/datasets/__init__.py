# Copyright (c) convmixer_mm contributors. All rights reserved.
from .fashion_mnist import DataNotFoundError, FashionMNISTIDX, read_idx

__all__ = ['FashionMNISTIDX', 'DataNotFoundError', 'read_idx']
