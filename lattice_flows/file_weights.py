"""The weight diagnostics of a sample file: its own log w, or its production's attributes.

docs/conventions.md "Flow quality at scale"; the diagnostics themselves are
:mod:`lattice_flows.weights`, their rows in a table :func:`lattice_flows.tables.analyze_samples`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lattice_flows import weights as W
from lattice_flows.io.sample_reader import SampleFile


def _rank_files(sf: SampleFile) -> list[Path]:
    names = sf.attrs.get("merged_from")
    if names is None:
        return []
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(names)]
    return [sf.path.parent / n for n in names if (sf.path.parent / n).exists()]


def _worst_rank(sf: SampleFile) -> dict | None:
    """The production's ``weights_*`` figures (a merged MPI view: the rank of the largest k-hat,
    failed draws summed over ranks), or None when no file has them."""
    found = [W.from_attrs(SampleFile(p).attrs) for p in _rank_files(sf)] or [W.from_attrs(sf.attrs)]
    found = [d for d in found if d is not None]
    if not found:
        return None
    d = dict(max(found, key=lambda x: (-math.inf if x.get("khat") is None or
                                       not math.isfinite(float(x["khat"])) else float(x["khat"]))))
    d["n_failed"] = int(sum(int(x.get("n_failed", 0)) for x in found))
    return d


def _composite_weights(sf: SampleFile) -> dict | None:
    """Composite chains (``sample.mode: composite``): the weights of their flow proposals as the
    production counted them (k-hat, max w / sum w, N_eff; the longest run of rejected flow
    proposals against the flow steps per chain). Flags: k-hat and failed draws only; HMC moves
    the chain between flow steps, so a long run of flow rejections is not a stuck chain."""
    d = _worst_rank(sf)
    if d is None:
        return None
    khat = float(d["khat"]) if d.get("khat") is not None else math.nan
    d["longest_rejection_run"] = int(d.get("longest_rejection_run") or 0)
    d["chain_length"] = int(d.get("chain_length") or 0)
    d["flags"] = W.flags_for(khat, int(d["n"]), d["n_failed"])
    return d


def flow_weights(sf: SampleFile, discard: int = 0) -> dict | None:
    """Weight diagnostics of a flow sample file (None for HMC), as a dict of
    :class:`lattice_flows.weights.WeightDiagnostics` fields.

    Importance files: computed from their log w (every draw). Flow chains: the production's
    figures on all proposals (``weights_*`` attributes; for a merged MPI view the worst rank),
    with the longest rejection run recomputed on the analysed rows (after ``discard``) against
    their number per chain. Composite chains: :func:`_composite_weights`.
    """
    kind = sf.attrs.get("kind")
    if kind == "flow-importance":
        return W.weight_diagnostics(sf.extra("log_w")).as_dict()
    if kind == "composite":
        return _composite_weights(sf)
    if kind != "flow-mcmc":
        return None
    d = _worst_rank(sf)
    if d is None:  # a file written before the diagnostics existed: only the chain's own checks
        d = {"n": None, "n_zero": None, "n_failed": int(sf.attrs.get("n_nonfinite", 0) or 0),
             "ess": math.nan, "ess_fraction": math.nan, "khat": math.nan,
             "khat_threshold": math.nan, "max_weight_fraction": math.nan, "missing": True}
    acc = np.asarray(sf.accepted(), dtype=bool)[discard:]
    acc = acc[:, None] if acc.ndim == 1 else acc
    d["longest_rejection_run"] = int(W.longest_false_run(acc).max()) if acc.size else 0
    d["chain_length"] = int(acc.shape[0])
    khat = float(d["khat"]) if d.get("khat") is not None else math.nan
    if d.get("missing"):
        d["flags"] = W.flags_for(-math.inf, 1, d["n_failed"], d["longest_rejection_run"],
                                 d["chain_length"])
    else:
        d["flags"] = W.flags_for(khat, int(d["n"]), d["n_failed"], d["longest_rejection_run"],
                                 d["chain_length"])
    return d
