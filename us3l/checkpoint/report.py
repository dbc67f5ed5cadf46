"""What happened when a checkpoint met a model: every key accounted for, and a hard error on mismatch.

Detectron2 and mmengine only warn when a tensor is skipped for a shape mismatch; a width mismatch would
then load silently and cost AP. Every loader in us3l builds a :class:`LoadReport` and raises on problems.
"""
from __future__ import annotations

import dataclasses

from ..errors import US3LError


class CheckpointError(US3LError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


@dataclasses.dataclass
class LoadReport:
    loaded: list[str] = dataclasses.field(default_factory=list)
    sliced: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)  # left out on purpose, with the reason

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors ({len(self.sliced)} sliced to the model's width), "
                 f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.mismatched)} shape-mismatched, {len(self.dropped)} dropped on purpose"]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("mismatched", self.mismatched), ("dropped", self.dropped)):
            for k in keys[:20]:
                lines.append(f"  {title}: {k}")
            if len(keys) > 20:
                lines.append(f"  ... {len(keys) - 20} more {title}")
        return "\n".join(lines)

    def raise_if_bad(self, context: str) -> None:
        if not self.ok:
            raise CheckpointError(f"{context}: the checkpoint does not match the model\n{self.summary()}")
