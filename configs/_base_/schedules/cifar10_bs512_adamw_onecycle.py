# Optimisation of the authors' ~92.5% CIFAR-10 command
# (https://github.com/locuslab/convmixer-cifar10, train.py):
#   --lr-max=0.05 --wd=0.005, 25 epochs (default), AMP with a GradScaler,
#   no gradient clipping (--clip-norm is off by default).
optim_wrapper = dict(
    type='MixedPrecisionOptimWrapper',
    loss_scale='dynamic',
    # optim.AdamW(model.parameters(), lr=lr_max, weight_decay=wd): decay
    # on every parameter, torch's default betas and eps.
    optimizer=dict(type='AdamW', lr=0.05, weight_decay=0.005),
)

# lr_schedule = np.interp([t], [0, epochs*2//5, epochs*4//5, epochs],
#                         [0, lr_max, lr_max/20.0, 0]), set every batch.
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

train_cfg = dict(by_epoch=True, max_epochs=25, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# One GPU x 512 images.
auto_scale_lr = dict(base_batch_size=512)
