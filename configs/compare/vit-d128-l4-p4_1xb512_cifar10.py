# A small mmpretrain VisionTransformer (4 layers of width 128, 4 heads, a
# 320-wide MLP) on 4x4 patches of 32x32 images: 0.61M parameters, matching
# ConvMixer-256/8 (0.59M) within 10%.
# Peak lr 2e-3 instead of the ConvMixer recipe's, which keeps a ViT near
# chance on Fashion-MNIST (see the Fashion-MNIST ViT config).
# base_batch_size = (1 GPU) x (512 samples per GPU) = 512.
_base_ = ['./_base_/cifar10.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        arch=dict(
            embed_dims=128,
            num_layers=4,
            num_heads=4,
            feedforward_channels=320),
        img_size=32,
        patch_size=4,
        out_type='cls_token'),
    head=dict(
        type='VisionTransformerClsHead', num_classes=10, in_channels=128))

optim_wrapper = dict(optimizer=dict(lr=2e-3))
