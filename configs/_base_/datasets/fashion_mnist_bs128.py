# Fashion-MNIST from Debian's dataset-fashion-mnist (IDX .gz files in
# /usr/share/datasets/fashion-mnist); set data_root elsewhere, or
# download=True online to use mmpretrain's downloader.
dataset_type = 'FashionMNISTIDX'
data_root = '/usr/share/datasets/fashion-mnist'

train_pipeline = [
    # Pad by 2 with black and crop back to 28x28, and flip: clothes are
    # left-right symmetric.
    dict(type='RandomCrop', crop_size=28, padding=2),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
# Any image, a photo too, reaches the model as 28x28 gray (alpha on white);
# the data set's own images pass unchanged. The aspect ratio is not kept:
# Fashion-MNIST's items fill the frame.
test_pipeline = [
    dict(type='ToChannels', channels=1),
    dict(type='Resize', scale=(28, 28)),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=128,
    # The pipeline is cheap; a worker would take a core from the model.
    num_workers=0,
    # Explicit, because mmpretrain's tools/train.py defaults it to True,
    # which needs workers.
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=256,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='test',
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, ))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
