# Copyright (c) OpenMMLab. All rights reserved.
# Adapted from mmpretrain 1.x tests/test_models/test_heads.py (TestClsHead,
# TestLinearClsHead) with the type swapped for ConvMixerClsHead, to show
# that it stands in for LinearClsHead on pooled (B, C) features. Changes:
# ClsHead has no in_channels/num_classes, so DEFAULT_ARGS gains them and
# ClsHead's "forward returns pre_logits" checks become shape checks; the
# last test adds the deliberate difference: a (B, C, H, W) map is pooled.
import re
from unittest import TestCase

import torch
from mmengine import is_seq_of

import convmixer_mm  # noqa: F401  (registers ConvMixerClsHead)
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample


class TestClsHead(TestCase):
    DEFAULT_ARGS = dict(type='ConvMixerClsHead', in_channels=10,
                        num_classes=10)
    FAKE_FEATS = (torch.rand(4, 10), )

    def test_pre_logits(self):
        head = MODELS.build(self.DEFAULT_ARGS)

        # return the last item
        feats = (torch.rand(4, 10), torch.rand(4, 10))
        pre_logits = head.pre_logits(feats)
        self.assertIs(pre_logits, feats[-1])

    def test_forward(self):
        head = MODELS.build(self.DEFAULT_ARGS)

        feats = (torch.rand(4, 10), torch.rand(4, 10))
        outs = head(feats)
        self.assertEqual(outs.shape, (4, 10))

    def test_loss(self):
        feats = self.FAKE_FEATS
        data_samples = [DataSample().set_gt_label(1) for _ in range(4)]

        # with cal_acc = False
        head = MODELS.build(self.DEFAULT_ARGS)

        losses = head.loss(feats, data_samples)
        self.assertEqual(losses.keys(), {'loss'})
        self.assertGreater(losses['loss'].item(), 0)

        # with cal_acc = True
        cfg = {**self.DEFAULT_ARGS, 'topk': (1, 2), 'cal_acc': True}
        head = MODELS.build(cfg)

        losses = head.loss(feats, data_samples)
        self.assertEqual(losses.keys(),
                         {'loss', 'accuracy_top-1', 'accuracy_top-2'})
        self.assertGreater(losses['loss'].item(), 0)

        # test assertion when cal_acc but data is batch augmented.
        data_samples = [
            sample.set_gt_score(torch.rand(10)) for sample in data_samples
        ]
        cfg = {
            **self.DEFAULT_ARGS, 'cal_acc': True,
            'loss': dict(type='CrossEntropyLoss', use_soft=True)
        }
        head = MODELS.build(cfg)
        with self.assertRaisesRegex(AssertionError, 'batch augmentation'):
            head.loss(feats, data_samples)

    def test_predict(self):
        feats = (torch.rand(4, 10), )
        data_samples = [DataSample().set_gt_label(1) for _ in range(4)]
        head = MODELS.build(self.DEFAULT_ARGS)

        # with without data_samples
        predictions = head.predict(feats)
        self.assertTrue(is_seq_of(predictions, DataSample))
        for pred in predictions:
            self.assertIn('pred_label', pred)
            self.assertIn('pred_score', pred)

        # with with data_samples
        predictions = head.predict(feats, data_samples)
        self.assertTrue(is_seq_of(predictions, DataSample))
        for sample, pred in zip(data_samples, predictions):
            self.assertIs(sample, pred)
            self.assertIn('pred_label', pred)
            self.assertIn('pred_score', pred)


class TestLinearClsHead(TestCase):
    DEFAULT_ARGS = dict(type='ConvMixerClsHead', in_channels=10,
                        num_classes=5)
    FAKE_FEATS = (torch.rand(4, 10), )

    def test_initialize(self):
        with self.assertRaisesRegex(ValueError, 'num_classes=-5 must be'):
            MODELS.build({**self.DEFAULT_ARGS, 'num_classes': -5})

    def test_pre_logits(self):
        head = MODELS.build(self.DEFAULT_ARGS)

        # return the last item
        feats = (torch.rand(4, 10), torch.rand(4, 10))
        pre_logits = head.pre_logits(feats)
        self.assertIs(pre_logits, feats[-1])

    def test_forward(self):
        head = MODELS.build(self.DEFAULT_ARGS)

        feats = (torch.rand(4, 10), torch.rand(4, 10))
        outs = head(feats)
        self.assertEqual(outs.shape, (4, 5))

    def test_same_scores_as_linear_cls_head(self):
        # Not in mmpretrain: the same weights give the same scores as
        # LinearClsHead, on pooled features and on the map they pool.
        ours = MODELS.build(self.DEFAULT_ARGS)
        theirs = MODELS.build({**self.DEFAULT_ARGS, 'type': 'LinearClsHead'})
        theirs.load_state_dict(ours.state_dict())
        self.assertEqual(set(ours.state_dict()), {'fc.weight', 'fc.bias'})
        fmap = torch.rand(4, 10, 3, 3)
        pooled = fmap.mean(dim=(2, 3))
        torch.testing.assert_close(ours((pooled, )), theirs((pooled, )))
        torch.testing.assert_close(ours((fmap, )), theirs((pooled, )))
        # The deliberate difference: a map's pre_logits is its pooled
        # vector, not the map itself.
        torch.testing.assert_close(ours.pre_logits((fmap, )), pooled)

    def test_bad_shape(self):
        head = MODELS.build(self.DEFAULT_ARGS)
        for shape in [(4, ), (4, 10, 3), (4, 10, 3, 3, 1)]:
            with self.assertRaisesRegex(
                    ValueError, r'\(B, C, H, W\) feature maps or pooled '
                    rf'\(B, C\) features, got shape {re.escape(str(shape))}'):
                head((torch.rand(*shape), ))
