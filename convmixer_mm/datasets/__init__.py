# Copyright (c) convmixer_mm contributors. All rights reserved.
from .fashion_mnist import DataNotFoundError, FashionMNISTIDX

__all__ = ['FashionMNISTIDX', 'DataNotFoundError']
