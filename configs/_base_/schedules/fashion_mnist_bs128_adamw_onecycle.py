# The authors' CIFAR-10 optimiser and one-cycle schedule, shortened for a
# few-minute CPU run: AdamW, lr 0 -> 0.01 -> 0.0005 -> 0 per iteration.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=dict(max_norm=1.0),
)

param_scheduler = [
    dict(
        type='PiecewiseLinearLR',
        milestones=(0., 0.4, 0.8, 1.),
        factors=(0., 1., 0.05, 0.),
        by_epoch=True,
        begin=0,
        # `end` defaults to train_cfg.max_epochs.
        convert_to_iter_based=True),
]

train_cfg = dict(by_epoch=True, max_epochs=5, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# One process x 128 images.
auto_scale_lr = dict(base_batch_size=128)
