# Copyright (c) convmixer_mm contributors. All rights reserved.
from .fashion_mnist import DataNotFoundError, FashionMNISTIDX
from .transforms import ToChannels, to_channels

__all__ = ['FashionMNISTIDX', 'DataNotFoundError', 'ToChannels', 'to_channels']
