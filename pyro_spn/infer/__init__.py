"""Variational inference with circuits: :class:`AutoSPN`, an autoguide whose posterior is a sum-product network,
and the exact conditional CDFs and implicit reparameterization of circuits with Normal leaves behind it."""

from .autospn import POSTERIOR_ESTIMATORS, AutoSPN, AutoSPNPosterior, default_structure
from .circuit_cdf import (
    conditional_log_cdfs,
    conditional_log_tails,
    implicit_rsample,
    marginal_log_cdfs,
    marginal_quantiles,
)

__all__ = ["POSTERIOR_ESTIMATORS", "AutoSPN", "AutoSPNPosterior", "conditional_log_cdfs", "conditional_log_tails",
           "default_structure", "implicit_rsample", "marginal_log_cdfs", "marginal_quantiles"]
