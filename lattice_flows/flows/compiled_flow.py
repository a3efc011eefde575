"""Which part of a flow ``compile: true`` compiles: the network of every coupling layer's conditioner.

The conditioner network is where the flow's work is (the convolutions; the bijection, the mask
combination and the Fourier / zero-mode / continuous layers are a few element-wise or FFT
kernels and stay eager), and every estimator reaches it: ``reverse`` and sampling through
``Flow.forward``, ``path_gradient`` and ``forward`` through ``Flow.inverse``,
``path_gradient_fast`` through the layers one by one. Per conditioner kind:

* :class:`~lattice_flows.flows.nets.ConvConditioner` (``symmetrized``, the default): its CNN
  ``net``, i.e. the unit the conditioner calls once per chunk of rows
  (:func:`~lattice_flows.flows.conditioner_parts.in_chunks`). Compiling the conditioner itself
  would put the Python loop over chunks inside the compiled code: measured (L = 16, torch
  2.13), every new batch size then breaks the graph at the loop and recompiles it and its tail
  (the guards are on the number of chunks). Below the loop the compiled net sees the chunk size
  and the remainder only, and after a second size its batch axis is dynamic: the training batch,
  the evaluation batches and the sampling blocks share a few graphs (tests/unit/test_compile.py
  counts them). The symmetrisation x, -x and the tanh bounds stay eager.
* :class:`~lattice_flows.flows.nets.OddConvConditioner` (``odd``) and
  :class:`~lattice_flows.flows.global_kernel.GlobalKernelConditioner` (``global``,
  ``global_local``): the whole conditioner (the odd one's chunk loop is inside it: a new batch
  size recompiles, see above; at most ``torch._dynamo.config.recompile_limit`` shapes, after which
  torch runs that piece eagerly and logs a warning).

What it gains where (benchmarks/results/compile.md): on a CPU the convolutions are the same
library calls compiled or not, so the flow gains nothing there, and ``path_gradient_fast`` loses
(0.8-0.9x): its vector-Jacobian product with respect to the layer input runs the compiled
backward graph, which computes the weight gradients too (measured at L = 8, 64 rows: 1.69 ms
compiled vs 1.32 ms eager, which skips them; the full backward costs 1.72 / 1.74 ms). On a GPU,
where these small kernels are launch-bound, the fused activations are the point.

The conditioners of one flow share their compiled graphs (torch inlines the modules and passes
their weights as inputs), so a deep flow costs one compilation per shape and grad mode, not one
per layer.
"""

from __future__ import annotations

from torch import nn

from lattice_flows.compiled import compile_module
from lattice_flows.flows.coupling import CouplingLayer
from lattice_flows.flows.nets import ConvConditioner
from lattice_flows.logs import log


def compiled_unit(conditioner: nn.Module) -> nn.Module:
    """The module of ``conditioner`` that :func:`compile_flow` compiles (module docstring)."""
    if isinstance(conditioner, ConvConditioner):
        return conditioner.net
    return conditioner


def compile_flow(flow: nn.Module) -> nn.Module:
    """Compile, in place, the conditioner network of every coupling layer of ``flow``; returns
    the flow (its other layers stay eager; state dict unchanged)."""
    n = 0
    for i, layer in enumerate(getattr(flow, "layers", ())):
        if isinstance(layer, CouplingLayer):
            compile_module(compiled_unit(layer.conditioner), f"the conditioner of flow layer {i}")
            n += 1
    if n == 0:
        log.warning("compile: true: this flow has no coupling layers; nothing of it is compiled")
    return flow
