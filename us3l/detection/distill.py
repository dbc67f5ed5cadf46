"""Inplace distillation inside a sandwich step: the max width teaches the smaller widths.

Only the two outputs that do not depend on which proposals a width happened to sample are distilled:

* RPN objectness: one logit per anchor; anchors are the same at every width, so student and teacher
  logits are compared anchor by anchor (binary cross-entropy to the teacher's probability).
* Box classification: the student's box head is run on the TEACHER's sampled proposals (the framework glue
  does that), and its class distribution is pulled to the teacher's (soft cross-entropy, optional
  temperature).

Teacher tensors must be detached (the max width is trained by its own supervised losses only). Both losses
are means over anchors / regions, so their scale does not grow with image size or batch size.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def objectness_distill_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean BCE of per-level objectness logits (any layout, e.g. ``[N, A, H, W]``) to sigmoid(teacher)."""
    if len(student) != len(teacher):
        raise ValueError(f"objectness distillation: {len(student)} student levels vs {len(teacher)} teacher levels")
    s = torch.cat([x.reshape(-1) for x in student])
    t = torch.cat([x.reshape(-1) for x in teacher]).detach()
    if s.shape != t.shape:
        raise ValueError(f"objectness distillation: {s.numel()} student anchors vs {t.numel()} teacher anchors "
                         "(student and teacher must see the same images)")
    if s.numel() == 0:
        return s.sum()
    return F.binary_cross_entropy_with_logits(s.float(), torch.sigmoid(t.float()))


def box_cls_distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Soft cross-entropy ``-sum p_teacher log p_student`` over classes (background included), mean over regions.

    Scaled by ``temperature**2`` so that gradients keep their size when the temperature changes.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"box classification distillation: student {tuple(student.shape)} vs teacher "
                         f"{tuple(teacher.shape)} (run the student's box head on the teacher's proposals)")
    if student.numel() == 0:
        return student.sum()
    t = F.softmax(teacher.detach().float() / temperature, dim=-1)
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    return -(t * log_s).sum(-1).mean() * temperature ** 2
