"""Flow quality: fresh proposals with their log-weights, and the figures measured on them.

For proposals phi ~ q of the flow, log w = -S(phi) - log q(phi) in float64 (docs/conventions.md
"Statistics"); on N fresh samples (>= 10,240 for a final figure, never per batch):

* ESS/N = (sum w)^2 / (N sum w^2) (:func:`lattice_flows.estimates.effective_sample_size`);
* the acceptance of ONE independence-Metropolis chain run over the N proposals in order (the
  first only initialises it; :func:`lattice_flows.metropolis.independence_chain`);
* tau_int of |M| and M^2 of that chain's current state after each step (Gamma-method, in
  proposals; 1/2 means uncorrelated);
* the tail diagnostics of the weights (docs/conventions.md "Flow quality at scale";
  :func:`lattice_flows.weights.weight_diagnostics`).

Used by the trainer's final evaluation (``train_summary.json``), the flow sampler
(:func:`propose`) and the benchmarks.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from lattice_flows.flows.flow import Flow
from lattice_flows.metropolis import chain_acceptance, independence_chain
from lattice_flows.estimates import effective_sample_size, gamma_method
from lattice_flows.theory.phi4 import Phi4Action
from lattice_flows.weights import weight_diagnostics


@torch.no_grad()
def propose(flow: Flow, action: Phi4Action, n: int, generator: torch.Generator,
            lattice_shape: tuple[int, ...] | None = None):
    """n flow samples with float64 action, log q and log w = -S - log q."""
    phi, log_q = flow.sample(n, generator=generator, lattice_shape=lattice_shape)
    s = action(phi.to(torch.float64))
    log_q = log_q.to(torch.float64)
    return phi, s, log_q, -(s + log_q)


@torch.no_grad()
def sample_log_weights(flow: Flow, action: Phi4Action, n_samples: int, batch_size: int,
                       generator: torch.Generator, lattice_shape: tuple[int, ...] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(log w, M, wall-s) of ``n_samples`` fresh proposals drawn in batches of ``batch_size``:
    log w = -S - log q and the magnetization M = (1/V) sum_x phi(x), both float64 on the CPU;
    the seconds cover sampling + action (no autograd)."""
    log_w, mags = [], []
    done = 0
    t0 = time.perf_counter()
    while done < n_samples:
        n = min(batch_size, n_samples - done)
        phi, _, _, lw = propose(flow, action, n, generator, lattice_shape)
        log_w.append(lw.cpu())
        mags.append(phi.double().mean(dim=tuple(range(1, phi.dim()))).cpu())
        done += n
    return torch.cat(log_w), torch.cat(mags), time.perf_counter() - t0


def chain_figures(log_w: torch.Tensor, magnetization: torch.Tensor, uniforms: torch.Tensor,
                  taus: tuple[str, ...] = ("absM", "M2")) -> dict:
    """Figures of one independence-Metropolis chain over the proposals ``log_w`` in order, with
    the U(0,1) numbers ``uniforms``: ``acceptance`` (step 0 not counted), ``accepted`` (bool
    per step), ``absM_chain_mean`` and, for each name in ``taus`` ("absM", "M2"),
    ``tau_int_<name>`` and ``tau_int_<name>_error`` of that series along the chain."""
    res = independence_chain(log_w, uniforms)
    chain_M = magnetization[res.index[:, 0].clamp(min=0)].numpy()  # M of the current state
    out = {"acceptance": chain_acceptance(res), "accepted": res.accepted[:, 0].numpy(),
           "absM_chain_mean": float(np.abs(chain_M).mean())}
    series = {"absM": abs(chain_M), "M2": chain_M**2}
    for name in taus:
        est = gamma_method(series[name][:, None])
        out[f"tau_int_{name}"] = est.tau_int
        out[f"tau_int_{name}_error"] = est.tau_int_error
    return out


@torch.no_grad()
def evaluate_flow(flow: Flow, action: Phi4Action, n_samples: int, batch_size: int,
                  generator: torch.Generator, lattice_shape=None) -> dict[str, float]:
    """Flow quality on ``n_samples`` fresh samples (module docstring): ESS/N, the acceptance of
    one independence-Metropolis chain over them, tau_int of |M| and M^2 along that chain
    (Gamma-method), the weights' tail diagnostics and proposals per second (sampling + action,
    no autograd). The chain's uniforms come from a CPU generator seeded from ``generator``."""
    lw, M, dt = sample_log_weights(flow, action, n_samples, batch_size, generator, lattice_shape)
    cpu_gen = torch.Generator().manual_seed(
        int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    )
    chain = chain_figures(lw, M, torch.rand(lw.numel(), generator=cpu_gen, dtype=torch.float64))
    finite = torch.isfinite(lw)
    out = {
        "ess": effective_sample_size(lw.numpy()),
        "acceptance": chain["acceptance"],
        "n_samples": int(lw.numel()),
        "n_nonfinite": int((~finite).sum()),
        "proposals_per_s": lw.numel() / dt,
        "log_w_std": float(lw[finite].std()) if finite.any() else float("nan"),
    }
    # tail diagnostics of the weights (docs/conventions.md "Flow quality at scale"): Pareto
    # k-hat, max w / sum w, N_eff, and the longest rejection run of the chain against its length
    wd = weight_diagnostics(lw.numpy(), chain["accepted"][:, None])
    out.update({"khat": wd.khat, "khat_threshold": wd.khat_threshold, "n_eff": wd.ess,
                "max_weight_fraction": wd.max_weight_fraction, "n_zero_weight": wd.n_zero,
                "longest_rejection_run": wd.longest_rejection_run,
                "weights_flags": wd.flags})
    out.update({k: chain[k] for k in ("tau_int_absM", "tau_int_absM_error", "tau_int_M2",
                                      "tau_int_M2_error")})
    return out
