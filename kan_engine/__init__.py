"""kan_engine: train Kolmogorov-Arnold Networks fast. No UI imports here.

For library use the main names are importable from the package itself (`from kan_engine import
KANLinear, Trainer`); they are resolved on first use, so that `import kan_engine.config` (the
preset commands) still does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "KANLinear": "kan_engine.kan",
    "Trainer": "kan_engine.trainer",
    "RunConfig": "kan_engine.config",
    "apply_overrides": "kan_engine.config",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'kan_engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
