# ConvMixer-256/8 (kernel 5, patch 4: a 7x7 token grid) on Fashion-MNIST,
# 0.59M parameters; paired with resnet18-w15_* and vit-d128-l4-p4_* at the
# same parameter count (within 10%) and similar FLOPs.
# base_batch_size = (1 process) x (128 samples) = 128.
_base_ = ['./_base_/fashion-mnist.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ConvMixerMM',
        arch=dict(embed_dims=256, depth=8, patch_size=4, kernel_size=5),
        in_channels=1),
    head=dict(type='ConvMixerClsHead', num_classes=10, in_channels=256))
