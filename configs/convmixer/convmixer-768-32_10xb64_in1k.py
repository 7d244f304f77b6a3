# ConvMixer-768/32 on ImageNet-1k with the authors' recipe (see
# configs/convmixer/README.md for how it differs from mmpretrain's).
# base_batch_size = (10 GPUs) x (64 samples per GPU) = 640.
_base_ = [
    '../_base_/models/convmixer/convmixer-768-32.py',
    '../_base_/datasets/imagenet_bs64_convmixer_224.py',
    '../_base_/schedules/imagenet_bs640_adamw_onecycle.py',
    '../_base_/default_runtime.py',
]

# The authors trained ConvMixer-768/32 for 300 epochs (paper, Table 1); the
# one-cycle schedule stretches over them.
train_cfg = dict(max_epochs=300)
