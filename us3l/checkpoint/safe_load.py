"""Reading checkpoint files without running code from them.

Why: a pickle names functions that the loader calls (``__reduce__``), so an unrestricted ``pickle.load`` /
a full (non weights-only) ``torch.load`` of a downloaded checkpoint can run anything. Every file this project
reads goes through one of two loaders here, which rebuild plain data only and refuse anything else with a
one-line :class:`CheckpointError` naming what was refused:

* :func:`load_pickle`: Detectron2 ``.pkl`` (dicts, lists, tuples, strings, numbers, numpy arrays / scalars /
  dtypes, ``OrderedDict``).
* :func:`load_torch`: ``torch.load(weights_only=True)``, inside a scoped ``torch.serialization.safe_globals``
  allowlist of the few non-tensor types that Detectron2 / mmengine trainer states hold (numpy arrays,
  scalars and dtypes; mmengine's ``HistoryBuffer`` is added by the MMDetection runner, and stood in for by
  :class:`ForeignState` elsewhere so that converting never imports a framework).

Nothing here switches the protection off for a whole program (no environment switch that forces full unpickling).
"""
from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile

import numpy as np
import torch

from .report import CheckpointError

_PLAIN = "only plain data (tensors, numpy arrays, numbers, strings, containers) is loaded from checkpoints"

# (module, name) a plain-data pickle may reference; numpy 1.x files name numpy.core, numpy 2.x numpy._core
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}
PICKLE_GLOBALS = frozenset(_NUMPY_GLOBALS | {
    ("collections", "OrderedDict"),
    *((mod, name) for mod in ("builtins", "__builtin__")  # __builtin__: protocol-2 / Python 2 pickles
      for name in ("set", "frozenset", "complex", "bytearray")),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
})


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")  # Python 2 model-zoo pickles hold latin-1 byte strings
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in PICKLE_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise CheckpointError(f"refusing to unpickle {module}.{name} from {self.source}: {_PLAIN}")


def load_pickle(path: str):
    """A ``.pkl`` read with the plain-data unpickler (clear error on missing, corrupt or unsafe files)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        try:
            return _PlainDataUnpickler(f, path).load()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read {path} as a pickle (corrupt or truncated): "
                                  f"{type(e).__name__}: {_first_line(e)}") from e


class ForeignState:
    """Stand-in for a framework object in a checkpoint's training state (mmengine's ``HistoryBuffer``) when the
    caller does not need it: keeps the pickled arguments and attributes as data, runs none of the framework."""

    def __init__(self, *args):
        self.args = args

    def __setstate__(self, state):
        self.state = state


_STAND_INS = ("mmengine.logging.history_buffer.HistoryBuffer",)


def _class_attribute_getter(classes):
    """``getattr`` for the unpickler, limited to public attributes of ``classes``: mmengine pickles a
    HistoryBuffer's statistics methods as ``getattr(HistoryBuffer, "mean")``; nothing else may be looked up."""

    def restricted_getattr(obj, name):
        if any(obj is c for c in classes) and isinstance(name, str) and not name.startswith("_"):
            return getattr(obj, name, name)  # the stand-in has no methods: keep the name
        raise CheckpointError(f"refusing to unpickle getattr({getattr(obj, '__name__', type(obj).__name__)}, "
                              f"{name!r}): {_PLAIN}")

    return restricted_getattr


def _full_name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def trainer_state_globals(extra=()) -> list:
    """The ``torch.load(weights_only=True)`` allowlist: numpy types (also under their numpy 1.x names), the
    given framework classes, and :class:`ForeignState` for each known framework class not given."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric

    allowed = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, numeric._frombuffer,
               (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
               (multiarray.scalar, "numpy.core.multiarray.scalar"),
               (numeric._frombuffer, "numpy.core.numeric._frombuffer"),
               collections.OrderedDict]
    allowed += sorted({type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGSUV"} | {type(np.dtype("O"))},
                      key=_full_name)
    allowed += list(extra)
    given = {_full_name(e) for e in extra if not isinstance(e, tuple)}
    allowed += [(ForeignState, name) for name in _STAND_INS if name not in given]
    getter = _class_attribute_getter([ForeignState, *(e for e in extra if isinstance(e, type))])
    allowed += [(getter, "builtins.getattr"), (getter, "__builtin__.getattr")]
    return allowed


def load_torch(path: str, extra_globals=(), map_location="cpu"):
    """``torch.load(weights_only=True)`` of ``path`` with :func:`trainer_state_globals` allowed in this call only."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    with torch.serialization.safe_globals(trainer_state_globals(extra_globals)):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            refused = re.search(r"GLOBAL ([\w.]+)", str(e))
            if refused:
                raise CheckpointError(f"refusing to unpickle {refused.group(1)} from {path}: {_PLAIN}") from e
            # not a refused type: a damaged or foreign file (never follow torch's advice to load it in full)
            reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
            raise CheckpointError(f"cannot read checkpoint {path} (corrupt, truncated or not a torch file): "
                                  f"{reason.group(1) if reason else type(e).__name__}") from e
        except Exception as e:  # torch raises several types for truncated / foreign files
            raise CheckpointError(f"cannot read checkpoint {path} (corrupt, truncated or not a torch file): "
                                  f"{type(e).__name__}: {_first_line(e)}") from e


def is_pickle_file(path: str) -> bool:
    """A ``.pkl`` that is a plain pickle (Detectron2's format), not a torch zip file with that suffix; a legacy
    (non-zip) torch file has another suffix and stays with :func:`load_torch`."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        zipped = f.read(2) == b"PK"
    return path.endswith(".pkl") and not zipped


def load_any(path: str, extra_globals=()):
    """A ``.pkl`` that is a pickle through :func:`load_pickle`; anything else (torch zip files, whatever their
    suffix) through :func:`load_torch`."""
    return load_pickle(path) if is_pickle_file(path) else load_torch(path, extra_globals)


def check_checkpoint_file(path: str, what: str = "checkpoint", torch_only: bool = False) -> None:
    """Refuse, without loading it, a checkpoint that is missing, empty or a zip file whose directory does not read
    (a save or a download cut short); with ``torch_only`` also a file that is neither a torch zip file nor a legacy
    torch (pickle protocol 2+) file. Cheap (a few bytes and the zip directory): the framework command lines call it
    before their framework writes a work folder, a log or a config for a run that would then fail in the load."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        try:
            zipfile.ZipFile(path).close()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"cannot read {what} {path} (corrupt or truncated: {e})") from None
    elif not head or (torch_only and head[:1] != b"\x80"):
        raise CheckpointError(f"cannot read {what} {path} (corrupt, truncated or not a torch file)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["PICKLE_GLOBALS", "ForeignState", "check_checkpoint_file", "is_pickle_file", "load_any", "load_pickle",
           "load_torch", "trainer_state_globals"]
