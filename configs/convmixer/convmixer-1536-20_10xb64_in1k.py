# ConvMixer-1536/20 on ImageNet-1k with the authors' recipe (see
# configs/convmixer/README.md for how it differs from mmpretrain's).
# base_batch_size = (10 GPUs) x (64 samples per GPU) = 640.
_base_ = [
    '../_base_/models/convmixer/convmixer-1536-20.py',
    '../_base_/datasets/imagenet_bs64_convmixer_224.py',
    '../_base_/schedules/imagenet_bs640_adamw_onecycle.py',
    '../_base_/default_runtime.py',
]

# 150 epochs, as the authors' command (--epochs 150) and Table 1.
