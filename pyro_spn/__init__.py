"""pyro_spn: sum-product networks as Pyro distributions, with exact inference and differentiable sampling."""

from .distribution import ConditionalSPNDistribution, SPNDistribution
from .spn import RatSPN

__all__ = ["ConditionalSPNDistribution", "RatSPN", "SPNDistribution", "__version__"]
__version__ = "0.2.0"
