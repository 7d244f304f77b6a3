# A small mmpretrain VisionTransformer (4 layers of width 128, 4 heads, a
# 256-wide MLP) on 16x16 patches of 160 px images (100 tokens): 0.64M
# parameters, matching ConvMixer-256/8 (0.64M) within 10%.
# Peak lr 2e-3 instead of the ConvMixer recipe's, which keeps a ViT near
# chance on Fashion-MNIST (see the Fashion-MNIST ViT config).
# base_batch_size = (1 GPU) x (128 samples per GPU) = 128.
_base_ = ['./_base_/imagenette-160.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        arch=dict(
            embed_dims=128,
            num_layers=4,
            num_heads=4,
            feedforward_channels=256),
        img_size=160,
        patch_size=16,
        out_type='cls_token'),
    head=dict(
        type='VisionTransformerClsHead', num_classes=10, in_channels=128))

optim_wrapper = dict(optimizer=dict(lr=2e-3))
