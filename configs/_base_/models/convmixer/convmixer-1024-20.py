# ConvMixer-1024/20 (kernel 9, patch 14) for ImageNet-1k, Table 1 of
# https://arxiv.org/abs/2201.09792.
_base_ = './convmixer_in1k.py'

model = dict(
    backbone=dict(
        arch='1024/20',
        # GELU, as the official ConvMixer-1024/20.
        act_cfg=dict(type='GELU')),
    head=dict(in_channels=1024),
)
