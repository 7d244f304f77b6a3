# mmpretrain's CIFAR ResNet-18 (3x3 stem, no max pooling) with 15/30/60/120
# channels: 0.62M parameters, matching ConvMixer-256/8 (0.59M) within 10%.
# base_batch_size = (1 GPU) x (512 samples per GPU) = 512.
_base_ = ['./_base_/cifar10.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNet_CIFAR', depth=18, stem_channels=15, base_channels=15),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=120))
