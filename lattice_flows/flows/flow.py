"""A normalizing flow: a prior r(z) and a stack of bijective layers phi = f_K(...f_1(z)).

Change of variables (Rezende & Mohamed 2015; Albergo et al. 2021, arXiv:2101.08176)::

    log q(phi) = log r(z) - sum_k log|det J_k|,     z = f^-1(phi)

Every layer returns its exact log|det J| per batch member, summed over sites in float64; the
running total through the layers and the prior's log density are float64 too, so log q is
float64 whatever the flow's dtype (the per-site terms keep the flow's dtype; the rounding of
float32 totals of size ~V would otherwise bias log w at V = 4096 and in d = 3, 4).
:meth:`Flow.sample` evaluates log q in the same pass as phi; :meth:`Flow.log_prob` runs the
inverse. Independence Metropolis and reweighting (w = exp(-S - log q), docs/conventions.md,
"Statistics") are exact only when log q(phi) of one sample does not depend on the other batch
members: no layer may use batch statistics, and none
here does.

TF32 rule: every pass of the flow (:meth:`Flow.forward`, hence :meth:`Flow.sample`, and
:meth:`Flow.inverse`, hence :meth:`Flow.log_prob`) runs inside
:func:`lattice_flows.devices.ieee_float32` (float32 convolutions and matmuls in IEEE float32,
the previous settings restored after). On a GPU cuDNN runs float32 convolutions in TF32 by
default (~1e-3 relative): a TF32 forward pass is still a bijection with its own exact log q, but
not the map the IEEE inverse inverts, and the package mixes the two: the composite sampler
weighs proposals by the forward pass's log q and the states HMC moved by the inverse's, forward
KL and the validation NLL score data by the inverse of the map that produced the samples. So the
flow is one map in every pass. Gradients taken later, outside the scope (``loss.backward()``),
use the global settings (TF32 there only adds noise to a gradient estimate); code that evaluates
layers directly must open the scope itself.

The flow is size-agnostic: masks are checkerboard unit cells tiled to the input, the
conditioners are convolutions and the Fourier layer is parametrised in phat^2, so a flow trained
at one L runs at any even L of the same dimension (``sample(n, lattice_shape=...)``).

Example::

    >>> from lattice_flows.config import FlowConfig
    >>> flow = build_flow(FlowConfig(n_layers=4, hidden_channels=(8,)), (8, 8), m2=-4.0)
    >>> phi, log_q = flow.sample(16)
    >>> torch.allclose(flow.log_prob(phi), log_q, atol=1e-4)
    True
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from lattice_flows.config import FlowConfig
from lattice_flows.devices import ieee_float32
from lattice_flows.flows.bijections import make_bijection
from lattice_flows.flows.cnf import ContinuousEquivariantLayer
from lattice_flows.flows.conditioner_parts import chunk_rows
from lattice_flows.flows.coupling import CouplingLayer
from lattice_flows.flows.fourier import FourierGaussianLayer
from lattice_flows.flows.global_kernel import GlobalKernelConditioner
from lattice_flows.flows.masks import check_even_extents, checkerboard
from lattice_flows.flows.nets import ConvConditioner, OddConvConditioner
from lattice_flows.flows.prior import StandardNormalPrior
from lattice_flows.flows.zero_mode import WIDTHS as ZERO_MODE_WIDTHS, ZeroModeLayer


class Flow(nn.Module):
    """Prior plus layers; each layer has ``forward(x) -> (y, logdet)`` and ``inverse(y)``.

    Args:
        prior: base density with ``sample``, ``log_prob`` and a default ``lattice_shape``.
        layers: bijective layers applied in order from z to phi.
    """

    def __init__(self, prior: StandardNormalPrior, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.prior = prior
        self.layers = nn.ModuleList(layers)

    @property
    def lattice_shape(self) -> tuple[int, ...]:
        """The default lattice shape (the prior's)."""
        return self.prior.lattice_shape

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        for p in self.parameters():
            return p.device, p.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    #: sites per pass of the whole flow on the CPU (rows are independent, so a large batch runs
    #: in passes of fewer rows with the same results): measured with the CNF flows of
    #: configs/ladder_cnf (one thread, AVX512), the cost per proposal is flat up to 2^18 sites
    #: per call and 2.1-2.5x higher beyond (L = 16: 1.2 CPU-ms at 1024 rows, 3.0 at 2048;
    #: L = 32: 5.0 at 256 rows, 10.3 at 512), when the float64 features of the continuous layer
    #: leave the cache. Other devices: one pass (chunks would serialise the kernels).
    max_sites_per_pass = 1 << 18

    def _in_passes(self, fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = chunk_rows(x.shape[1:], x.shape[0], self.max_sites_per_pass)
        if rows >= x.shape[0] or x.device.type != "cpu":
            return fn(x)
        parts = [fn(c) for c in x.split(rows)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """phi = f(z) and sum_k log|det J_k| (float64), shape ``(batch,)``; in IEEE float32
        (:func:`~lattice_flows.devices.ieee_float32`, module docstring); on the CPU in passes of
        at most :attr:`max_sites_per_pass` sites."""
        return self._in_passes(self._forward, z)

    def _forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
        x = z
        with ieee_float32():  # one map in every pass (module docstring)
            for layer in self.layers:
                x, ld = layer(x)
                logdet = logdet + ld
        return x, logdet

    def inverse(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = f^-1(phi) and log|det dz/dphi| = -sum_k log|det J_k| (float64), shape (batch,);
        in IEEE float32 (:func:`~lattice_flows.devices.ieee_float32`, module docstring); on the
        CPU in passes of at most :attr:`max_sites_per_pass` sites."""
        return self._in_passes(self._inverse, phi)

    def _inverse(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(phi.shape[0], dtype=torch.float64, device=phi.device)
        x = phi
        with ieee_float32():  # one map in every pass (module docstring)
            for layer in reversed(self.layers):
                x, ld = layer.inverse(x)
                logdet = logdet + ld
        return x, logdet

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        lattice_shape: tuple[int, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw (phi, log q(phi)) for n samples, log q = log r(z) - log|det J| in one pass;
        phi in the flow's dtype, log q in float64.

        ``lattice_shape`` overrides the prior's default (same d, even extents). Gradients flow
        through phi and log q (reverse-KL training); wrap in ``torch.no_grad()`` for proposals.
        """
        shape = self.lattice_shape if lattice_shape is None else tuple(lattice_shape)
        if len(shape) != len(self.lattice_shape):
            raise ValueError(
                f"lattice_shape {shape} must have d = {len(self.lattice_shape)} dimensions like "
                f"the flow's {self.lattice_shape}"
            )
        device, dtype = self._device_dtype()
        z = self.prior.sample(
            n, generator=generator, device=device, dtype=dtype, lattice_shape=shape
        )
        phi, logdet = self(z)
        return phi, self.prior.log_prob(z) - logdet

    def log_prob(self, phi: torch.Tensor) -> torch.Tensor:
        """log q(phi) = log r(f^-1(phi)) + log|det d f^-1/dphi|, float64, shape ``(batch,)``;
        in IEEE float32 (:func:`~lattice_flows.devices.ieee_float32`, module docstring)."""
        with ieee_float32():
            z, logdet = self.inverse(phi)
            return self.prior.log_prob(z) + logdet

    def n_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def fourier_m2_init(m2: float | None) -> float:
    """Free-field mass squared for the Fourier layer's initialisation.

    m2 itself when m2 > 0 (then, for lam = 0, the fresh flow is exactly the target); 1.0 when
    m2 <= 0 or unknown (a tachyonic Gaussian is not normalizable; 1.0 gives a unit-scale
    Gaussian with correlation length ~1 that training adapts).
    """
    return float(m2) if m2 is not None and m2 > 0 else 1.0


def build_flow(
    flow_cfg: FlowConfig, lattice_shape: tuple[int, ...], m2: float | None = None
) -> Flow:
    """Build the flow of ``flow_cfg`` for ``lattice_shape`` (any d >= 1, even extents).

    Layers: an optional :class:`ZeroModeLayer` (``flow_cfg.zero_mode_layer``, widths
    ``flow_cfg.zero_mode_widths``), an optional
    :class:`FourierGaussianLayer` (``flow_cfg.fourier_layer``, initialised
    with :func:`fourier_m2_init` of ``m2``), ``flow_cfg.cnf_layers`` continuous equivariant layers
    (:class:`~lattice_flows.flows.cnf.ContinuousEquivariantLayer`, ``cnf_steps`` RK4 steps,
    ``cnf_frequencies``, ``cnf_time_basis``, ``cnf_lipschitz_max``, ``cnf_kernel``,
    ``cnf_kernel_range``), then ``flow_cfg.n_layers`` coupling layers, layer k
    updating the checkerboard sites of parity k % 2 with ``flow_cfg.bijection`` and a
    :class:`ConvConditioner` (``flow_cfg.conditioner = 'symmetrized'``) or an
    :class:`OddConvConditioner` (``'odd'``) or a
    :class:`~lattice_flows.flows.global_kernel.GlobalKernelConditioner` (``'global'``: lattice-sized
    FFT kernels, ``flow_cfg.global_channels`` fields, ``hidden_channels`` its 1x1 MLP; ``'global_local'``
    adds the symmetrised local conv net's output, an ablation).
    """
    shape = check_even_extents(lattice_shape)
    ndim = len(shape)
    layers: list[nn.Module] = []
    if getattr(flow_cfg, "zero_mode_layer", False):
        widths = tuple(getattr(flow_cfg, "zero_mode_widths", ZERO_MODE_WIDTHS))
        layers.append(ZeroModeLayer(ndim, widths))
    if flow_cfg.fourier_layer:
        init = getattr(flow_cfg, "fourier_m2_init", "auto")
        m2_init = fourier_m2_init(m2) if init == "auto" else float(init)
        layers.append(FourierGaussianLayer(shape, m2_init=m2_init))
    for _ in range(getattr(flow_cfg, "cnf_layers", 0)):
        layers.append(ContinuousEquivariantLayer(
            ndim, n_frequencies=flow_cfg.cnf_frequencies, n_time=flow_cfg.cnf_time_basis,
            n_steps=flow_cfg.cnf_steps, lipschitz_max=flow_cfg.cnf_lipschitz_max,
            kernel=getattr(flow_cfg, "cnf_kernel", "phat"),
            kernel_range=getattr(flow_cfg, "cnf_kernel_range", 16),
        ))
    odd = getattr(flow_cfg, "conditioner", "symmetrized") == "odd" and flow_cfg.equivariant
    for k in range(flow_cfg.n_layers):
        bijection = make_bijection(flow_cfg.bijection)
        common = dict(
            hidden_channels=tuple(flow_cfg.hidden_channels),
            kernel_size=flow_cfg.kernel_size,
            activation=flow_cfg.activation,
            parities=bijection.param_parities,
            bounded=bijection.param_bounded,
            identity_init=getattr(flow_cfg, "identity_init", True),
        )
        kind = getattr(flow_cfg, "conditioner", "symmetrized")
        conditioner: nn.Module
        if kind in ("global", "global_local"):  # kernels span the lattice (flows/global_kernel.py)
            local = None
            if kind == "global_local":  # ablation: the local net's unbounded output added
                local = ConvConditioner(ndim, equivariant=True,
                                        **{**common, "bounded": (False,) * len(common["bounded"])})
            conditioner = GlobalKernelConditioner(
                ndim, channels=getattr(flow_cfg, "global_channels", 8), local=local,
                **{k: v for k, v in common.items() if k != "kernel_size"},
            )
        elif odd:
            conditioner = OddConvConditioner(ndim, **common)
        else:
            conditioner = ConvConditioner(ndim, equivariant=flow_cfg.equivariant, **common)
        layers.append(CouplingLayer(checkerboard((2,) * ndim, k % 2), conditioner, bijection))
    return Flow(StandardNormalPrior(shape), layers)


BASELINE_FLOW_CONFIG = FlowConfig(
    n_layers=16,
    hidden_channels=(8, 8),
    kernel_size=3,
    equivariant=False,
    activation="leaky_relu",
    fourier_layer=False,
    bijection="affine",
    identity_init=False,
)


def build_baseline_flow(lattice_shape: tuple[int, ...]) -> Flow:
    """The published tutorial baseline (Albergo et al. 2021, arXiv:2101.08176, Sec. "Affine
    coupling flows"): 16 non-equivariant affine couplings, conv hidden [8, 8], kernel 3,
    LeakyReLU, final tanh, no Fourier layer, PyTorch's default initialisation of every conv
    (``identity_init=False``), as in the tutorial.
    """
    return build_flow(BASELINE_FLOW_CONFIG, lattice_shape)
