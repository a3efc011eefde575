"""Opt-in ``torch.compile`` (config key ``compile: true``): what is compiled, and what a failure does.

Compiled, when ``compile: true``:

* every coupling layer's conditioner network (:mod:`lattice_flows.flows.compiled_flow`), in
  place with :func:`compile_module` (:meth:`torch.nn.Module.compile`): parameter names and the
  state dict are unchanged, so a flow file written by a compiled run loads into eager code and
  back (and ``copy.deepcopy`` of a compiled module is an eager copy);
* the HMC integrator (:mod:`lattice_flows.mcmc.hmc_compiled`): the force and the
  drift / kick updates of one step as compiled functions, the loop over the jittered number of
  steps outside them, and the step size as a tensor input, so neither a new step count nor a
  tuned step size recompiles.

Nothing else changes: the prior draws, the action, the Hamiltonian and the accept/reject stay
eager. Results agree with eager ones up to float rounding (fused kernels may round differently,
e.g. by FMA; tests/unit/test_compile.py bounds it), not bit for bit, so a run resumed with the
other setting continues validly but not bit-identically.

Compilation happens on the first call of each compiled piece (and again for a new input shape
or grad mode; ``dynamic=None``: a second shape makes the batch dimension symbolic where the code
allows it). A failure there (no working C++ compiler for the CPU backend, no Triton for CUDA,
an operation the compiler does not support) is NOT papered over by a silent fall-back to eager
code: it raises :class:`CompileError` naming the piece, the compiler's own message and the
remedy (set ``compile: false``). The one fall-back left is torch's own: a piece recompiled more
than ``torch._dynamo.config.recompile_limit`` times (8; shapes or grad modes) runs eagerly from
then on, with torch's warning in the log; the HMC kernels and the default conditioner's CNN
are cut so that a run stays far below it (tests/unit/test_compile.py counts the graphs).
torch's ``donated_buffer`` optimisation is switched off while compiling, because
``path_gradient_fast`` takes a vector-Jacobian product through the conditioner before the
loss's backward (``retain_graph``), which donated buffers refuse. Inductor compiles with as many
worker processes as it sees cores; on a shared machine set ``TORCHINDUCTOR_COMPILE_THREADS=1``.

Figures (benchmarks/compile.py, this CPU): benchmarks/results/compile.md; on this CPU the HMC
integrator gains (1.1-2.0x), the flow does not (0.8-1.0x). Formulas: the compiled pieces
compute what their eager counterparts compute (docs/conventions.md, "Action" and "Force for
HMC").

Example (compiles on the first call: seconds)::

    >>> f = compiled(lambda x: 2 * x, "doubling")
    >>> f(torch.ones(2)).tolist()
    [2.0, 2.0]
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

REMEDY = ("set 'compile: false' in the config (top-level key) to run without torch.compile; "
          "on a CPU torch.compile needs a working C++ compiler (e.g. g++), on CUDA Triton")


class CompileError(RuntimeError):
    """``compile: true`` could not compile a piece; the message names it and the remedy."""


def _compile_failures() -> tuple[type[BaseException], ...]:
    """The exception types by which torch.compile reports that it could not compile."""
    kinds: list[type[BaseException]] = []
    try:
        from torch._dynamo import exc as dynamo_exc

        kinds += [getattr(dynamo_exc, n) for n in ("BackendCompilerFailed", "Unsupported",
                                                    "InternalTorchDynamoError") if hasattr(dynamo_exc, n)]
    except ImportError:  # pragma: no cover - torch without dynamo
        pass
    try:
        from torch._inductor import exc as inductor_exc

        kinds += [getattr(inductor_exc, n) for n in ("InductorError", "CppCompileError")
                  if hasattr(inductor_exc, n)]
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def _checked(fn: Callable, what: str) -> Callable:
    """``fn`` whose compile failures become a :class:`CompileError` naming ``what``."""
    failures = _compile_failures()

    def call(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except failures as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CompileError(f"compile: true: torch.compile failed on {what} "
                               f"({type(exc).__name__}: {first}); {REMEDY}.") from exc

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def _prepare() -> None:
    """Process-wide compiler settings of ``compile: true`` (see the module docstring)."""
    try:
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False
    except (ImportError, AttributeError):  # pragma: no cover - older torch
        pass


def compiled(fn: Callable, what: str, **options: Any) -> Callable:
    """``torch.compile(fn, dynamic=None, **options)`` with failures reported as
    :class:`CompileError` (``what`` names the piece in the message)."""
    _prepare()
    options.setdefault("dynamic", None)
    return _checked(torch.compile(fn, **options), what)


def compile_module(module: nn.Module, what: str, **options: Any) -> nn.Module:
    """Compile ``module`` in place (:meth:`torch.nn.Module.compile`, ``dynamic=None``): its
    ``__call__`` runs the compiled forward; parameters, buffers and state-dict keys unchanged.
    Returns the module."""
    _prepare()
    options.setdefault("dynamic", None)
    module.compile(**options)
    inner = getattr(module, "_compiled_call_impl", None)
    if inner is not None:  # the compiled call of nn.Module.compile, with failures named
        module._compiled_call_impl = _checked(inner, what)
    return module


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` was compiled in place by :func:`compile_module`."""
    return getattr(module, "_compiled_call_impl", None) is not None
