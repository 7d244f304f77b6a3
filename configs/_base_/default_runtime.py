# Runtime shared by every ConvMixer config. Self-contained: no
# `mmpretrain::` inheritance, which needs pkg_resources.
default_scope = 'mmpretrain'
custom_imports = dict(imports=['convmixer_mm'], allow_failed_imports=False)

# Atomic checkpoints that load with torch.load(weights_only=True), clear
# checkpoint errors, and CPU (gloo) DDP: see convmixer_mm/engine/runner.py.
runner_type = 'ConvMixerRunner'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    # A log line with the ETA every 100 iterations, and at least every 10 s
    # (convmixer_mm/engine/hooks.py).
    logger=dict(type='ProgressLoggerHook', interval=100, time_interval=10),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/*.py switch to gloo on machines without a GPU.
    dist_cfg=dict(backend='nccl'),
)

# Add dict(type='TensorboardVisBackend') for TensorBoard (README, Curves).
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)

log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
