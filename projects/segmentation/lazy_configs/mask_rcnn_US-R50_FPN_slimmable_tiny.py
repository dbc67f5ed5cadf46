# LazyConfig twin of ../configs/mask_rcnn_US-R50_FPN_slimmable_tiny.yaml: the universally slimmable Mask R-CNN on
# the embedded synthetic set (64 px, CPU), built from Detectron2's own common LazyConfig model with the slimmable
# backbone, RPN head and ROI heads put in. Train / evaluate with projects/segmentation/lazy_train_net.py:
#   python projects/segmentation/lazy_train_net.py --config-file THIS.py train.max_iter=100
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

import us3l.d2  # noqa: F401  (registers us3l_shapes_{train,val} from $US3L_DATASETS)
from us3l.d2.slimmable_backbone import slimmable_resnet_fpn
from us3l.d2.slimmable_heads import US3LSlimmableROIHeads, US3LSlimmableRPNHead

WIDTH_RANGE = (0.25, 1.0)
FPN_CHANNELS = 64  # the tiny heads of the YAML twin (FPN 64, box head 256, mask head 64)

model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone = L(slimmable_resnet_fpn)(depth=50, out_features=["res2", "res3", "res4", "res5"],
                                         out_channels=FPN_CHANNELS, norm="BN", width_range=WIDTH_RANGE, slim=True,
                                         width=1.0)  # the YAML twin's FPN (BN, per-width statistics)
model.pixel_mean = [123.675, 116.28, 103.53]  # RGB, normalised as in pre-training
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"
rpn = model.proposal_generator
rpn.head = L(US3LSlimmableRPNHead)(in_channels=FPN_CHANNELS, num_anchors=3, slim=True, width_range=WIDTH_RANGE)
rpn.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
rpn.batch_size_per_image = 64
rpn.pre_nms_topk = (400, 200)
rpn.post_nms_topk = (200, 100)
heads = model.roi_heads
heads._target_ = US3LSlimmableROIHeads
heads.update(slim=True, width_range=WIDTH_RANGE, num_classes=4, batch_size_per_image=32)
heads.box_head.input_shape = ShapeSpec(channels=FPN_CHANNELS, height=7, width=7)
heads.box_head.fc_dims = [256, 256]
heads.box_predictor.input_shape = ShapeSpec(channels=256)
heads.box_predictor.test_topk_per_image = 20
heads.mask_head.input_shape = ShapeSpec(channels=FPN_CHANNELS, height=14, width=14)
heads.mask_head.conv_dims = [64] * 5

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = "us3l_shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(64,), sample_style="choice", max_size=128),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0
dataloader.test.dataset.names = "us3l_shapes_val"
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=64, max_size=128)]
dataloader.test.num_workers = 0
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", use_fast_impl=False,
                                        output_dir="${...train.output_dir}/inference")

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.01
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[80], num_updates=100),
    warmup_length=10 / 100, warmup_factor=0.001)

train = get_config("common/train.py").train
train.update(output_dir="output/lazy_mask_rcnn_US-R50_FPN_slimmable_tiny", max_iter=100, eval_period=0,
             log_period=5, device="cpu", init_checkpoint="",
             clip_gradients=dict(enabled=True, clip_type="norm", clip_value=35.0))
train.checkpointer.period = 100

us3l = dict(
    width_range=WIDTH_RANGE,
    sandwich=dict(num_random=1, distill=False, distill_weight=1.0, seed=0),
    calibration=dict(widths=[1.0, 0.5, 0.25], num_batches=4),
    eval_widths=[1.0, 0.5, 0.25],
)
