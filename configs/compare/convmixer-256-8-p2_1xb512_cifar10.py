# ConvMixer-256/8 (kernel 5, patch 2), the authors' CIFAR-10 model, 0.59M
# parameters; paired with resnet18-w15_* and vit-d128-l4-p4_* at the same
# parameter count (within 10%).
# base_batch_size = (1 GPU) x (512 samples per GPU) = 512.
_base_ = ['./_base_/cifar10.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ConvMixerMM',
        arch=dict(embed_dims=256, depth=8, patch_size=2, kernel_size=5)),
    head=dict(type='ConvMixerClsHead', num_classes=10, in_channels=256))
