"""Keep `import onnxruntime` from importing torch, for the 1.19.2 training builds ftonnx pins.

Why: in onnxruntime-training(-cpu) 1.19.2, `import onnxruntime` runs a build check that imports
`onnxruntime.training.ortmodule`, whose package imports `onnxruntime.training.optim` (torch) and
`onnxruntime.training.artifacts`, which reaches `onnxruntime/tools/__init__.py`, which imports
`pytorch_export_helpers` (torch) whenever torch is installed. With torch that costs seconds at every
start; without torch, `optim` fails and leaves `onnxruntime.training` unimportable. Nothing ftonnx
uses (generate_artifacts and onnxblock, the training API, quantisation, the ORT-format converter,
the float16 converter, InferenceSession) needs those three modules, and ORTModule 1.19.2 does not
even import with torch 2.13. Stubs for exactly those three in `sys.modules`, placed before the first
`import onnxruntime`, fix both; `ftonnx/__init__.py` places them.

A stub raises ImportError naming `FTONNX_ORT_ALLOW_TORCH` on any use; setting that variable to 1
restores the stock behaviour. Other onnxruntime builds and versions are left alone.
`tests/test_no_torch.py` checks this against the pinned version.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import os
import sys
import types

BUILDS = {"onnxruntime-training-cpu": "1.19.2", "onnxruntime-training": "1.19.2"}
OPT_OUT = "FTONNX_ORT_ALLOW_TORCH"
_HELPERS = "onnxruntime.tools.pytorch_export_helpers"
STUBBED = ("onnxruntime.training.ortmodule", "onnxruntime.training.optim", _HELPERS)


class _Stub(types.ModuleType):
    """A stand-in module: using it raises ImportError (what `from stub import X` must raise, and what
    onnxruntime's own optional imports catch); dunder lookups stay AttributeError, as for any module."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise ImportError(f"{self.__name__}.{name} is unavailable: ftonnx stubs {self.__name__} so that "
                          f"importing onnxruntime does not import torch; set {OPT_OUT}=1 for the real module",
                          name=self.__name__)


def _infer_input_info(*args, **kwargs):
    """`onnxruntime.tools` re-exports this name when torch is installed; on real use, load the real helper."""
    sys.modules.pop(_HELPERS, None)
    return importlib.import_module(_HELPERS).infer_input_info(*args, **kwargs)


def _pinned_build() -> bool:
    """Whether the installed onnxruntime is a training build at the pinned version (metadata only: importing
    onnxruntime to ask would defeat the purpose)."""
    for dist, version in BUILDS.items():
        try:
            if importlib.metadata.version(dist) == version:
                return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def install() -> bool:
    """Place the stubs, unless opted out, too late (onnxruntime already imported) or another build; True if placed."""
    if os.environ.get(OPT_OUT) == "1" or "onnxruntime" in sys.modules or STUBBED[0] in sys.modules:
        return False
    if not _pinned_build():
        return False
    for name in STUBBED:
        stub = sys.modules[name] = _Stub(name, "ftonnx stub, see ftonnx.ortshim")
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[_HELPERS].infer_input_info = _infer_input_info
    return True
