"""Observable tables with Gamma-method errors from a sample file (used by CLI and analysis/).

Primary observables (per-configuration averages): M, |M|, M^2, M^4, chi2 = V M^2, E, S/V,
G(0, ..., 0, t) and C(t). Derived observables (functions of averages, errors by linear
propagation = Gamma-method for derived quantities, CONVENTIONS.md "Statistics"):
U4 = 1 - <M^4> / (3 <M^2>^2) and m_eff(t) = arccosh[(C(t-1) + C(t+1)) / (2 C(t))].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lattice_flows.io.hdf5 import DataFileError, SampleFile
from lattice_flows.statistics import DEFAULT_S, Estimate, estimate_obs, gamma_method, make_obs

SAMPLE_FILE_NAMES = ("merged.h5", "samples.h5", "hmc.h5")


@dataclass(frozen=True)
class Row:
    """One line of an observable table."""

    name: str
    kind: str  # 'primary' | 'derived'
    est: Estimate

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, **self.est.as_dict()}


def find_sample_files(path: str | Path) -> list[Path]:
    """A file itself, or the sample files of a run folder (merged view preferred)."""
    p = Path(path)
    if p.is_dir():
        found = [p / n for n in SAMPLE_FILE_NAMES if (p / n).exists()]
        if not found:
            raise DataFileError(
                f"{p}: no sample file in this run folder (looked for {', '.join(SAMPLE_FILE_NAMES)})."
            )
        if (p / "merged.h5").exists():
            return [p / "merged.h5"]
        return found
    if not p.exists():
        raise DataFileError(f"{p}: no such file or run folder.")
    return [p]


def analyze_samples(sf: SampleFile, discard: int = 0, S: float = DEFAULT_S,
                    max_t: int | None = None) -> list[Row]:
    """Gamma-method table of every observable in ``sf``, dropping the first ``discard`` rows."""
    n = sf.n_saved - discard
    if n < 2:
        raise DataFileError(
            f"{sf.path}: only {sf.n_saved} committed rows ({discard} discarded); need >= 2 to analyse."
        )
    obs = {k: v[discard:] for k, v in sf.observables().items()}
    rows: list[Row] = []
    for name in ("M", "absM", "M2", "M4", "chi2", "E", "action_density"):
        if name in obs:
            rows.append(Row(name, "primary", gamma_method(obs[name], S=S)))
    rows.append(Row("acceptance", "primary", gamma_method(sf.accepted()[discard:].astype(np.float64), S=S)))
    if "M2" in obs and "M4" in obs:
        m2, m4 = make_obs(obs["M2"]), make_obs(obs["M4"])
        if m2.value > 0:
            rows.append(Row("U4", "derived", estimate_obs(1 - m4 / (3 * m2 * m2), S=S)))
    L_t = sf.lattice_shape[-1]
    t_max = L_t // 2 if max_t is None else min(max_t, L_t - 1)
    if "G" in obs:
        G = obs["G"]
        for t in range(t_max + 1):
            idx = (slice(None), slice(None)) + (0,) * (G.ndim - 3) + (t,)
            rows.append(Row(f"G[{t}]", "primary", gamma_method(G[idx], S=S)))
    if "C" in obs:
        C = obs["C"]
        C_obs = [make_obs(C[:, :, t]) for t in range(L_t)]
        for t in range(t_max + 1):
            rows.append(Row(f"C[{t}]", "primary", estimate_obs(C_obs[t], S=S)))
        for t in range(1, t_max):
            num = C_obs[t - 1] + C_obs[t + 1]
            ratio = num / (2 * C_obs[t])
            if ratio.value > 1 and math.isfinite(ratio.value):
                rows.append(Row(f"m_eff[{t}]", "derived", estimate_obs(ratio.arccosh(), S=S)))
    return rows


def format_table(rows: list[Row], title: str = "") -> str:
    """A fixed-width text table: observable, value, error, tau_int +- error, kind."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'observable':<16}{'value':>14}{'error':>12}{'tau_int':>10}{'+-':>8}  kind")
    for r in rows:
        e = r.est
        lines.append(
            f"{r.name:<16}{e.value:>14.6g}{e.error:>12.3g}{e.tau_int:>10.3f}{e.tau_int_error:>8.3f}  {r.kind}"
        )
    return "\n".join(lines)


def rows_to_json(rows: list[Row], meta: dict) -> str:
    return json.dumps({"meta": meta, "observables": [r.as_dict() for r in rows]}, indent=1)
