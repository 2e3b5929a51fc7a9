"""Variational inference with circuits: :class:`AutoSPN`, an autoguide whose posterior is a sum-product network,
:class:`StratifiedELBO`, its ELBO stratified over the children of the circuit's top sum layer, and the exact
conditional CDFs and implicit reparameterization of circuits with Normal leaves behind them."""

from .autospn import POSTERIOR_ESTIMATORS, AutoSPN, AutoSPNPosterior, default_structure
from .circuit_cdf import (
    conditional_log_cdfs,
    conditional_log_tails,
    implicit_rsample,
    marginal_log_cdfs,
    marginal_quantiles,
)
from .stratified import StratifiedELBO

__all__ = ["POSTERIOR_ESTIMATORS", "AutoSPN", "AutoSPNPosterior", "conditional_log_cdfs", "conditional_log_tails",
           "StratifiedELBO", "default_structure", "implicit_rsample", "marginal_log_cdfs", "marginal_quantiles"]
