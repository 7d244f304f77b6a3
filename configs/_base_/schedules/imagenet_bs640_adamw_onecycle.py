# The ConvMixer authors' ImageNet optimisation (timm command in
# https://github.com/locuslab/convmixer README "Training"):
#   --opt adamw --lr 0.01 --opt-eps=1e-3 --clip-grad 1.0 --amp
#   --sched onecycle --warmup-epochs 0 --epochs 150, 10 GPUs x -b 64.
optim_wrapper = dict(
    # --amp: fp16 with a dynamic loss scale on GPU, bf16 autocast on CPU.
    type='MixedPrecisionOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(
        type='AdamW',
        # --lr 0.01 for the total batch of 640.
        lr=0.01,
        # timm's default --weight-decay 2e-5, which the command keeps.
        weight_decay=2e-5,
        # --opt-eps=1e-3.
        eps=1e-3,
        # timm's default --opt-betas for AdamW.
        betas=(0.9, 0.999)),
    # timm's create_optimizer exempts biases and norm weights (every 1-d
    # parameter) from weight decay.
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    # --clip-grad 1.0 (timm's default --clip-mode norm).
    clip_grad=dict(max_norm=1.0, norm_type=2),
)

# --sched onecycle of the authors' timm fork, stepped every iteration: lr
# 0 -> 0.01 linearly by 40% of training, -> 0.0005 (lr / 20) by 80%, -> 0.
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

# --epochs 150.
train_cfg = dict(by_epoch=True, max_epochs=150, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# 10 GPUs x 64 images: --auto-scale-lr rescales lr 0.01 to other batches.
auto_scale_lr = dict(base_batch_size=640)
