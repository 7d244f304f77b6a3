# ConvMixer-768/32 (kernel 7, patch 7) for ImageNet-1k, Table 1 of
# https://arxiv.org/abs/2201.09792.
_base_ = './convmixer_in1k.py'

model = dict(
    backbone=dict(
        arch='768/32',
        # ReLU: the authors trained ConvMixer-768/32 with act_layer=nn.ReLU
        # (timm convmixer_768_32); mmpretrain's config also uses ReLU.
        act_cfg=dict(type='ReLU')),
    head=dict(in_channels=768),
)
