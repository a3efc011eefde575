"""Normalizing flows for lattice phi^4: prior, masks, conditioner nets, bijections, couplings,
a Fourier-space Gaussian layer, a zero-mode layer and the flow built from a :class:`~lattice_flows.config.FlowConfig`.

    log q(phi) = log N(z; 0, 1) - sum_layers log|det J_layer|,    phi = f(z)

See the module docstrings for formulae and references; conventions in docs/conventions.md.
"""

from lattice_flows.flows.bijections import AffineBijection, make_bijection
from lattice_flows.flows.conditioner_parts import make_activation
from lattice_flows.flows.coupling import CouplingLayer
from lattice_flows.flows.flow import (
    BASELINE_FLOW_CONFIG,
    Flow,
    build_baseline_flow,
    build_flow,
    fourier_m2_init,
)
from lattice_flows.flows.fourier import FourierGaussianLayer, lattice_momentum_squared
from lattice_flows.flows.masks import check_even_extents, checkerboard, tile_mask
from lattice_flows.flows.nets import ConvConditioner, OddConvConditioner
from lattice_flows.flows.periodic_conv import make_conv_net
from lattice_flows.flows.prior import StandardNormalPrior
from lattice_flows.flows.zero_mode import ZeroModeLayer

__all__ = [
    "AffineBijection",
    "BASELINE_FLOW_CONFIG",
    "ConvConditioner",
    "CouplingLayer",
    "Flow",
    "FourierGaussianLayer",
    "OddConvConditioner",
    "StandardNormalPrior",
    "ZeroModeLayer",
    "build_baseline_flow",
    "build_flow",
    "check_even_extents",
    "checkerboard",
    "fourier_m2_init",
    "lattice_momentum_squared",
    "make_activation",
    "make_bijection",
    "make_conv_net",
    "tile_mask",
]
