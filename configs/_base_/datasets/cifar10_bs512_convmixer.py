# CIFAR-10 pipelines of the authors' ~92.5% command
# (https://github.com/locuslab/convmixer-cifar10, train.py):
#   --ra-n=2 --ra-m=12 --scale=1.0 --jitter=0 --reprob=0, batch 512.
# With --scale=1.0 its RandomResizedCrop(32, scale=(1, 1), ratio=(1, 1)) is
# the identity, as are ColorJitter(0, 0, 0) and RandomErasing(p=0): they
# are left out. torchvision's own RandAugment runs through mmpretrain's
# 'torchvision/' wrappers, so the augmentation is the authors' exactly.
dataset_type = 'CIFAR10'

train_pipeline = [
    # mmpretrain's CIFAR10 images are RGB already.
    dict(type='NumpyToPIL', to_rgb=False),
    dict(type='torchvision/RandomHorizontalFlip', p=0.5),
    dict(type='torchvision/RandAugment', num_ops=2, magnitude=12),
    dict(type='PILToNumpy', to_bgr=False),
    dict(type='PackInputs'),
]

# ToTensor + Normalize for the data set's 32x32 images, which pass
# unchanged; any other image is brought to 3 channels (alpha on white) and
# its centre resized to 32x32.
test_pipeline = [
    dict(type='ToChannels', channels=3),
    dict(type='ResizeEdge', scale=32, edge='short'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    # --batch-size 512 (train.py's default), one GPU.
    batch_size=512,
    # --workers 2 (train.py's default).
    num_workers=2,
    dataset=dict(
        type=dataset_type,
        data_root='data/cifar10',
        split='train',
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=512,
    num_workers=2,
    dataset=dict(
        type=dataset_type,
        data_root='data/cifar10',
        split='test',
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, ))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
