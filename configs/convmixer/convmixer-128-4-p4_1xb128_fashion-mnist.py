# ConvMixer-128/4 (k5, p4) on Fashion-MNIST: the main job's recipe
# (`bash tools/main.sh`), a few minutes on 2 CPU cores.
# base_batch_size = (1 process) x (128 samples) = 128.
_base_ = [
    '../_base_/models/convmixer/convmixer-128-4_fashion-mnist.py',
    '../_base_/datasets/fashion_mnist_bs128.py',
    '../_base_/schedules/fashion_mnist_bs128_adamw_onecycle.py',
    '../_base_/default_runtime.py',
]

# 469 iterations per epoch: log every 50, keep the last two checkpoints.
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=1, max_keep_ckpts=2))
randomness = dict(seed=0)
