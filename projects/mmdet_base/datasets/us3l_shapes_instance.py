# The embedded synthetic dataset with instance masks (box and mask AP): us3l_shapes_detection.py whose pipelines
# load the masks too.
_base_ = './us3l_shapes_detection.py'

# mmengine runs a config with _base_ bound to its bases' variables (mmengine's "modify base variables")
train_pipeline = _base_.train_pipeline
train_pipeline[1].with_mask = True  # LoadAnnotations
test_pipeline = _base_.test_pipeline
test_pipeline[2].with_mask = True  # LoadAnnotations
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
