"""SSL and distillation losses.

With L2-normalised student output ``s`` and target ``t``, the negative cosine has gradient ``-t`` (only the
target sets the direction: consistent targets give consistent gradients); InfoNCE adds a negative term
``sum_k p_k k`` that depends on the other samples, which is why it needs consistent negatives too.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def neg_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``-cos(p, z)`` averaged over the batch; ``z`` is treated as a constant target."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def cross_view_cosine(p1, p2, z1, z2) -> torch.Tensor:
    """Symmetric cross-view negative cosine: student view v against target view v'."""
    return 0.5 * (neg_cosine(p1, z2) + neg_cosine(p2, z1))


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a (target) tensor from every process; no gradient flows through it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """Momentum-contrastive InfoNCE: query ``q`` against teacher keys ``k`` of every process.

    The positive of query i is key i of this process; all other keys are negatives (from the teacher).
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    keys = gather_no_grad(k)
    logits = q @ keys.t() / temperature
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    return F.cross_entropy(logits, labels) * (2.0 * temperature)


def cross_view_info_nce(q1, q2, k1, k2, temperature: float) -> torch.Tensor:
    return 0.5 * (info_nce(q1, k2, temperature) + info_nce(q2, k1, temperature))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over the local batch: both views of a sample are positives, all others negatives."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, labels)


def cross_view_nt_xent(s1, s2, t1, t2, temperature: float) -> torch.Tensor:
    """The reference's SimCLR-momentum loss: NT-Xent of the student's view v against the teacher's view v'.

    Each pair is one NT-Xent over the concatenated ``[student; teacher]`` batch (2B-1 candidates per row, the
    teacher detached), so the negatives come from both the student and the slowly moving teacher.
    """
    return 0.5 * (nt_xent(s1, t2.detach(), temperature) + nt_xent(s2, t1.detach(), temperature))


def normalized_std(z: torch.Tensor) -> float:
    """Per-dimension std of L2-normalised outputs, averaged (``~1/sqrt(d)`` healthy, ``0`` collapsed)."""
    with torch.no_grad():
        zn = F.normalize(z.detach().float(), dim=1)
        return float(zn.std(dim=0).mean()) if z.shape[0] > 1 else 0.0
