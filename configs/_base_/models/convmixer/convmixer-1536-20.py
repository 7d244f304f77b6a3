# ConvMixer-1536/20 (kernel 9, patch 7) for ImageNet-1k, Table 1 of
# https://arxiv.org/abs/2201.09792.
_base_ = './convmixer_in1k.py'

model = dict(
    backbone=dict(
        arch='1536/20',
        # GELU, as the official ConvMixer-1536/20.
        act_cfg=dict(type='GELU')),
    head=dict(in_channels=1536),
)
