# ConvMixer-256/8 (k5, p2) on CIFAR-10 with the authors' quick recipe;
# they report about 92.5% top-1 after 25 epochs.
# base_batch_size = (1 GPU) x (512 samples per GPU) = 512.
_base_ = [
    '../_base_/models/convmixer/convmixer-256-8_cifar.py',
    '../_base_/datasets/cifar10_bs512_convmixer.py',
    '../_base_/schedules/cifar10_bs512_adamw_onecycle.py',
    '../_base_/default_runtime.py',
]

# 98 iterations per epoch: log every 20.
default_hooks = dict(logger=dict(interval=20))
