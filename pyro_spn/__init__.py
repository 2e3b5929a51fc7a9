"""pyro_spn: sum-product networks as Pyro distributions, with exact inference and differentiable sampling."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .conditional import ConditionalSPNDistribution
    from .distribution import SPNDistribution
    from .spn import RatSPN

__all__ = ["ConditionalSPNDistribution", "RatSPN", "SPNDistribution", "__version__"]
__version__ = "0.2.0"

# The public classes and their modules, imported on first use: so the console scripts start without importing
# torch, and an interruption during their start-up is theirs to report (pyro_spn.scripts).
_LAZY = {"ConditionalSPNDistribution": "conditional", "SPNDistribution": "distribution", "RatSPN": "spn"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
