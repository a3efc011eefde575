#!/usr/bin/env python
"""Diagnostic plots (PNG) of training logs and sample files.

Subcommands (each takes run folders or HDF5 files; a run folder stands for its sample files
and, for ``train``, its ``train.h5``):

* ``train``          loss, ESS/N and acceptance vs step from ``train.h5`` (per-batch values of
                     the training log; the final evaluation on fresh samples from
                     ``train_summary.json`` as a star) -> ``train_history.png``
* ``correlators``    G(y) = G(0, ..., 0, y) along the last axis, C(t) and
                     m_eff(t) = arccosh[(C(t-1) + C(t+1)) / (2 C(t))] with Gamma-method error bars
                     (rows G[t], C[t], m_eff[t] of :func:`lattice_flows.tables.analyze_samples`)
                     -> ``correlators.png``
* ``autocorr``       normalised autocorrelation rho(t) = Gamma(t)/Gamma(0) of an observable
                     (default |M|) and the cumulative tau_int(W), with the window W chosen by the
                     automatic windowing (S = 1.5) marked (Wolff 2004) -> ``autocorr_<obs>.png``
* ``weights``        histogram of log w = -S - log q of flow files -> ``log_w.png``
* ``rejections``     histogram of the lengths of runs of consecutive rejected steps per chain,
                     with the geometric law of a constant acceptance for reference
                     -> ``rejection_runs.png``
* ``magnetization``  histograms of M of several runs overlaid (importance-sampling files
                     reweighted with w) -> ``magnetization.png``
* ``all``            every plot above that applies to the inputs

Example::

    python analysis/plots.py all runs/tutorial_flow --out figures/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import _common as C

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OBS_LABELS = {"absM": "|M|", "M": "M", "M2": "M²", "M4": "M⁴", "chi2": "χ₂", "E": "E",
              "action_density": "S/V"}
TRAIN_FORMAT = "lattice_flows.train"


# ---------------------------------------------------------------- inputs

def is_train_log(path: Path) -> bool:
    """True for a ``train.h5`` (format attribute), False otherwise (incl. non-HDF5)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
    except OSError:
        return False
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    return fmt == TRAIN_FORMAT


def split_inputs(paths: list[str], want_samples: bool = True, want_train: bool = True):
    """(sample-file paths, train-log paths) of the inputs: a folder gives its sample files and
    its train.h5 (if any); a file goes to the list its format says."""
    from lattice_flows.tables import SAMPLE_FILE_NAMES

    samples, trains = [], []
    for p in map(Path, paths):
        if p.is_dir():
            if want_train and (p / "train.h5").exists():
                trains.append(p / "train.h5")
            if want_samples and any((p / n).exists() for n in SAMPLE_FILE_NAMES):
                samples.append(p)
            if not (p / "train.h5").exists() and not any((p / n).exists() for n in SAMPLE_FILE_NAMES):
                raise C.fail(f"{p}: neither train.h5 nor a sample file "
                             f"({', '.join(SAMPLE_FILE_NAMES)}) in this run folder.")
        elif not p.exists():
            raise C.fail(f"{p}: no such file or run folder.")
        elif is_train_log(p):
            trains.append(p)
        else:
            samples.append(p)  # validated (or refused) by SampleFile
    return samples, trains


PREFIX = ""  # --prefix: prepended to every output file name


def save(fig, out: Path, name: str, dpi: int) -> Path:
    path = out / f"{PREFIX}{name}"
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    print(path)
    return path


def colors(n: int):
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(n)]


# ---------------------------------------------------------------- training history

def plot_train(logs: list[Path], out: Path, dpi: int, names: list[str] | None = None) -> Path:
    from lattice_flows.io.train_log import read_train_log

    data = [read_train_log(p) for p in logs]
    labels = names if names and len(names) == len(logs) else [
        p.parent.name if len(logs) > 1 else "" for p in logs]
    panels = [("loss", "loss (reverse KL estimate)", "linear"),
              ("ess", "ESS/N (per batch)", "log"),
              ("acceptance", "acceptance (per batch)", "linear")]
    panels = [p for p in panels if any(p[0] in d and np.isfinite(d[p[0]]).any() for d in data)]
    if not panels:
        raise C.fail(f"{', '.join(map(str, logs))}: no loss, ess or acceptance records to plot.")
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.3 * len(panels) + 0.4), sharex=True,
                             squeeze=False)
    for (key, ylabel, scale), ax in zip(panels, axes[:, 0]):
        for d, label, col, path in zip(data, labels, colors(len(data)), logs):
            if key not in d:
                continue
            y = np.asarray(d[key], dtype=float)
            ok = np.isfinite(y) & ((y > 0) if scale == "log" else True)
            ax.plot(d["step"][ok], y[ok], "-o", ms=3, color=col, label=label or None)
            summary = read_summary(path.parent)
            ev = summary.get(f"eval_{key}", summary.get(key) if key != "loss" else None)
            if ev is not None and len(d["step"]):
                n_ev = summary.get("eval_n_samples", "")
                ax.plot([d["step"][-1]], [ev], "*", ms=11, color=col,
                        label=f"final eval ({n_ev} fresh samples)" if n_ev else "final eval")
            if key == "loss":
                lz = importance_log_z(path.parent)
                if lz is not None:
                    ax.axhline(-lz, color=col, ls=":", label="−log Z (importance sampling)")
        ax.set_ylabel(ylabel)
        ax.set_yscale(scale)
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("training step")
    axes[0, 0].set_title("flow training history")
    fig.tight_layout()
    return save(fig, out, "train_history.png", dpi)


def read_summary(run_dir: Path) -> dict:
    f = run_dir / "train_summary.json"
    try:
        return json.loads(f.read_text()) if f.exists() else {}
    except ValueError:
        return {}


def importance_log_z(run_dir: Path) -> float | None:
    """log Z from an importance.h5 in the same folder (the lower bound of the reverse KL loss)."""
    from lattice_flows.estimates import log_partition_function

    f = run_dir / "importance.h5"
    if not f.exists():
        return None
    try:
        sf = C.SampleFile(f)
        lw = np.asarray(sf.extra("log_w"), dtype=float).ravel()
        return log_partition_function(lw[~(np.isnan(lw) | np.isposinf(lw))]).value  # failed draws out
    except C.DataFileError:
        return None


# ---------------------------------------------------------------- correlators

def _series(rows: dict, prefix: str):
    ts, vals, errs = [], [], []
    for name, est in rows.items():
        if name.startswith(prefix + "["):
            ts.append(int(name[len(prefix) + 1:-1]))
            vals.append(est.value)
            errs.append(est.error)
    order = np.argsort(ts)
    return np.asarray(ts)[order], np.asarray(vals)[order], np.asarray(errs)[order]


def plot_correlators(sources: list[C.Source], out: Path, dpi: int, discard: int | None = None) -> Path:
    from lattice_flows.tables import analyze_samples

    sources = [s for s in sources if {"G", "C"} & set(s.sf.observable_names)]
    if not sources:
        raise C.fail("no input has the observables G or C (output.store_G off?).")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    n = len(sources)
    for k, (s, col) in enumerate(zip(sources, colors(n))):
        rows = {r.name: r.est for r in analyze_samples(s.sf, discard=discard)}
        shift = (k - (n - 1) / 2) * 0.08  # dodge overlapping error bars
        for ax, prefix in zip(axes, ("G", "C", "m_eff")):
            t, v, e = _series(rows, prefix)
            if len(t) == 0:
                continue
            if prefix == "C":
                ok = v > 0  # log axis: points compatible with zero are drawn only if positive
                t, v, e = t[ok], v[ok], e[ok]
            ax.errorbar(t + shift, v, yerr=e, fmt="o-", ms=4, capsize=3, lw=1, color=col,
                        label=s.label)
    L_t = sources[0].sf.lattice_shape[-1]
    axes[0].set_title("G(0, y) along the last axis")
    axes[0].set_xlabel("y")
    axes[0].set_ylabel("G(y)")
    axes[1].set_title("zero-momentum correlator C(t)")
    axes[1].set_xlabel("t")
    axes[1].set_ylabel("C(t)")
    axes[1].set_yscale("log")
    axes[2].set_title("effective mass m_eff(t)")
    axes[2].set_xlabel("t")
    axes[2].set_ylabel("m_eff(t)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xticks(range(0, L_t // 2 + 1))
    handles, labels = axes[0].get_legend_handles_labels()
    shape = "x".join(map(str, sources[0].sf.lattice_shape))
    a = sources[0].sf.attrs
    fig.suptitle(f"lattice {shape}, m² = {a.get('m2')}, λ = {a.get('lam')}; "
                 "Γ-method errors (points dodged in t for legibility)", fontsize=10, y=0.99)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=9,
               frameon=False, bbox_to_anchor=(0.5, 0.955))
    fig.tight_layout(rect=(0, 0, 1, 0.91))
    return save(fig, out, "correlators.png", dpi)


# ---------------------------------------------------------------- autocorrelation

def autocorrelation(samples: np.ndarray, S: float):
    """(rho, tau_int(W) cumulative, its error, chosen window, tau_int, dtau) of (n, chains) data."""
    from lattice_flows.estimates import make_obs

    obs = make_obs(samples)
    obs.gamma_method(S=S)
    name = obs.e_names[0]
    return (np.asarray(obs.e_rho[name]), np.asarray(obs.e_n_tauint[name]),
            np.asarray(obs.e_n_dtauint[name]), int(obs.e_windowsize[name]),
            float(obs.e_tauint[name]), float(obs.e_dtauint[name]))


def plot_autocorr(sources: list[C.Source], out: Path, dpi: int, obs_name: str = "absM",
                  discard: int = 0, S: float = 1.5, max_lag: int | None = None) -> Path:
    chains = [s for s in sources if s.kind != "flow-importance"]
    if not chains:
        raise C.fail(f"{', '.join(str(s.path) for s in sources)}: no Markov-chain file "
                     "(importance-sampling samples are independent).")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    lags_needed = 10
    label = OBS_LABELS.get(obs_name, obs_name)
    for s, col in zip(chains, colors(len(chains))):
        discard = discard or 0
        x = s.sf.observable(obs_name)[discard:]
        if x.ndim != 2:
            raise C.fail(f"{s.path}: observable '{obs_name}' is not a scalar per configuration.")
        if x.shape[0] < 2:
            raise C.fail(f"{s.path}: only {x.shape[0]} rows after --discard {discard}.")
        if np.ptp(x) == 0:
            print(f"plots.py: {s.path}: {obs_name} is constant; no autocorrelation", file=sys.stderr)
            continue
        rho, ntau, ndtau, W, tau, dtau = autocorrelation(x, S)
        n_lag = len(rho) if max_lag is None else min(len(rho), max_lag + 1)
        lags_needed = max(lags_needed, 3 * W + 5)
        t = np.arange(n_lag)
        ax1.plot(t, rho[:n_lag], "-", lw=1.2, color=col, label=s.label)
        ax1.axvline(W, color=col, ls="--", lw=1)
        ax2.plot(t, ntau[:n_lag], "-", lw=1.2, color=col,
                 label=f"{s.label}: τ_int = {tau:.3g} ± {dtau:.2g} (W = {W})")
        ax2.fill_between(t, ntau[:n_lag] - ndtau[:n_lag], ntau[:n_lag] + ndtau[:n_lag],
                         color=col, alpha=0.2, lw=0)
        ax2.axvline(W, color=col, ls="--", lw=1)
        ax2.plot([W], [tau], "o", color=col)
    if max_lag is None:
        for ax in (ax1, ax2):
            ax.set_xlim(0, lags_needed)
    ax1.axhline(0, color="k", lw=0.6)
    ax1.set_title(f"normalised autocorrelation of {label} (dashed: window W, S = {S})")
    ax1.set_xlabel("t [saved configurations]")
    ax1.set_ylabel("Γ(t)/Γ(0)")
    ax2.set_title(f"τ_int(W) of {label}")
    ax2.set_xlabel("summation window W [saved configurations]")
    ax2.set_ylabel("τ_int(W)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax1.title.set_fontsize(9)
    fig.tight_layout()
    return save(fig, out, f"autocorr_{obs_name}.png", dpi)


# ---------------------------------------------------------------- log-weights

def plot_weights(sources: list[C.Source], out: Path, dpi: int, discard: int = 0,
                 bins: int = 60) -> Path:
    from lattice_flows.weights import weight_diagnostics

    flows = [s for s in sources if "log_w" in s.sf.extra_names]
    if not flows:
        raise C.fail(f"{', '.join(str(s.path) for s in sources)}: no flow file with /log_w.")
    data, diag = [], []
    for s in flows:
        lw = np.asarray(s.sf.extra("log_w")[discard or 0:], dtype=float).ravel()
        diag.append(weight_diagnostics(lw))  # zero weights (-inf) count in N
        data.append(lw[np.isfinite(lw)])
    allw = np.concatenate(data)
    lo, hi = np.percentile(allw, [0.05, 100])
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for s, lw, d, col in zip(flows, data, diag, colors(len(flows))):
        if s.kind == "flow-importance":
            what = f"proposals ~ q, ESS/N = {d.ess_fraction:.3g}, Pareto k̂ = {d.khat:.2f}"
        else:
            what = "chain states ~ p"
        ax.hist(lw, bins=edges, density=True, histtype="step", lw=1.5, color=col,
                label=f"{s.label} ({what}), std = {lw.std():.2f}")
    ax.set_xlabel("log w = −S(φ) − log q(φ)")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.set_title("flow log-weights")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out, "log_w.png", dpi)


# ---------------------------------------------------------------- rejection runs

def rejection_runs(accepted: np.ndarray) -> np.ndarray:
    """Lengths of maximal runs of consecutive rejections in each chain (column) of ``accepted``
    (n_steps, n_chains); runs cut by the start or end of the record count as they are."""
    acc = np.asarray(accepted, dtype=bool)
    if acc.ndim == 1:
        acc = acc[:, None]
    out = []
    for c in range(acc.shape[1]):
        rej = np.concatenate(([0], (~acc[:, c]).astype(np.int8), [0]))
        d = np.diff(rej)
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        out.append(ends - starts)
    return np.concatenate(out) if out else np.zeros(0, dtype=int)


def plot_rejections(sources: list[C.Source], out: Path, dpi: int, discard: int = 0) -> Path:
    chains = [s for s in sources if s.kind != "flow-importance"]
    if not chains:
        raise C.fail(f"{', '.join(str(s.path) for s in sources)}: no Markov-chain file "
                     "(importance sampling accepts everything).")
    fig, ax = plt.subplots(figsize=(6.4, 4))
    runs_all = []
    for s in chains:
        acc = s.sf.accepted()[discard or 0:]
        runs_all.append((rejection_runs(acc), float(acc.mean()) if acc.size else float("nan")))
    longest = max([int(r.max()) for r, _ in runs_all if r.size] + [1])
    if longest > 60:
        edges = np.unique(np.round(np.logspace(0, np.log10(longest + 1), 40)).astype(int))
        edges = np.append(edges, edges[-1] + 1) - 0.5
        ax.set_xscale("log")
    else:
        edges = np.arange(0.5, longest + 1.5)
    ymin, ymax = np.inf, 0.0
    for (runs, acc), s, col in zip(runs_all, chains, colors(len(chains))):
        if runs.size == 0:
            print(f"plots.py: {s.path}: no rejections", file=sys.stderr)
            continue
        counts, _ = np.histogram(runs, bins=edges)
        width = np.diff(edges)
        density = counts / counts.sum() / width
        centers = 0.5 * (edges[1:] + edges[:-1])
        ok = density > 0
        ymin, ymax = min(ymin, density[ok].min()), max(ymax, density[ok].max())
        ax.step(centers[ok], density[ok], where="mid", color=col, lw=1.5,
                label=f"{s.label}: acceptance {acc:.3f}, {runs.size} runs, "
                      f"mean {runs.mean():.3g}, max {runs.max()}")
        if 0 < acc < 1:  # geometric law P(k) = acc (1 - acc)^(k - 1) of a constant acceptance
            k = np.arange(1, longest + 1)
            ax.plot(k, acc * (1 - acc) ** (k - 1), ":", color=col, lw=1)
    ax.set_yscale("log")
    if ymax > 0:  # the geometric reference falls off fast: keep the data in view
        ax.set_ylim(ymin / 5, ymax * 3)
    ax.set_xlabel("length of a run of consecutive rejections")
    ax.set_ylabel("fraction of runs per unit length")
    ax.set_title("rejection runs per chain (dotted: geometric, constant acceptance)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out, "rejection_runs.png", dpi)


# ---------------------------------------------------------------- magnetization

def plot_magnetization(sources: list[C.Source], out: Path, dpi: int, discard: int = 0,
                       bins: int = 60) -> Path:
    have = [s for s in sources if "M" in s.sf.observable_names]
    if not have:
        raise C.fail(f"{', '.join(str(s.path) for s in sources)}: no observable M.")
    data = []
    for s in have:
        M = np.asarray(s.sf.observable("M")[discard or 0:], dtype=float).ravel()
        w = None
        if s.kind == "flow-importance" and "log_w" in s.sf.extra_names:
            lw = np.asarray(s.sf.extra("log_w")[discard or 0:], dtype=float).ravel()
            ok = np.isfinite(lw)
            M, lw = M[ok], lw[ok]
            w = np.exp(lw - lw.max())
        data.append((M, w))
    allM = np.concatenate([m for m, _ in data])
    lim = np.percentile(np.abs(allM), 99.9)
    edges = np.linspace(-lim, lim, bins + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for (M, w), s, col in zip(data, have, colors(len(have))):
        extra = " (reweighted)" if w is not None else ""
        ax.hist(M, bins=edges, weights=w, density=True, histtype="step", lw=1.5, color=col,
                label=f"{s.label}{extra}, N = {M.size}")
    a = have[0].sf.attrs
    shape = "x".join(map(str, have[0].sf.lattice_shape))
    ax.set_title(f"magnetization, lattice {shape}, m² = {a.get('m2')}, λ = {a.get('lam')}",
                 fontsize=10)
    ax.set_xlabel("M = (1/V) Σ_x φ(x)")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out, "magnetization.png", dpi)


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plots.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Subcommands: train, correlators, autocorr, weights, rejections, magnetization, "
               "all. 'plots.py SUBCOMMAND --help' for each.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("paths", nargs="+", help="run folders or HDF5 files")
        sp.add_argument("--out", default=".", help="output folder (default: current directory)")
        sp.add_argument("--dpi", type=int, default=100, help="resolution (default 100)")
        sp.add_argument("--prefix", default="", help="prepended to the output file names")
        sp.add_argument("--names", default=None,
                        help="comma-separated labels, one per sample file (per train log for "
                             "'train')")
        sp.add_argument("--discard", type=int, default=None, metavar="N",
                        help="drop the first N saved rows of every chain (default: none for the "
                             "raw-data figures; the correlators' Γ-method values drop the flow "
                             "chains' burn-in, lattice_flows.tables.default_discard)")
        return sp

    common(sub.add_parser("train", help="training history (loss, ESS, acceptance vs step)"))
    common(sub.add_parser("correlators", help="G(y), C(t), m_eff(t) with error bars"))
    sp = common(sub.add_parser("autocorr", help="normalised autocorrelation with the window"))
    sp.add_argument("--obs", default="absM", help="observable (default absM = |M|)")
    sp.add_argument("--S", type=float, default=1.5, help="Gamma-method S (default 1.5)")
    sp.add_argument("--max-lag", type=int, default=None, help="largest lag shown (default: 3 W)")
    common(sub.add_parser("weights", help="histogram of log w of flow files"))
    common(sub.add_parser("rejections", help="histogram of rejection-run lengths"))
    common(sub.add_parser("magnetization", help="overlaid histograms of M"))
    sp = common(sub.add_parser("all", help="every plot that applies"))
    sp.add_argument("--obs", default="absM", help="observable of the autocorrelation plot")
    sp.add_argument("--S", type=float, default=1.5, help="Gamma-method S (default 1.5)")
    return p


def run(args) -> int:
    global PREFIX
    PREFIX = args.prefix
    out = C.out_dir(args.out)
    names = C.parse_names(args.names)
    if args.discard is not None and args.discard < 0:
        raise C.fail(f"--discard must be >= 0, got {args.discard}")
    cmd = args.command
    if cmd == "train":
        _, logs = split_inputs(args.paths, want_samples=False)
        if not logs:
            raise C.fail(f"{', '.join(args.paths)}: no train.h5 among the inputs.")
        plot_train(logs, out, args.dpi, names)
        return 0
    samples, logs = split_inputs(args.paths, want_train=(cmd == "all"))
    if cmd != "all" and not samples:
        raise C.fail(f"{', '.join(args.paths)}: no sample file among the inputs.")
    sources = C.load_sources(samples, names) if samples else []
    if cmd == "correlators":
        plot_correlators(sources, out, args.dpi, args.discard)
    elif cmd == "autocorr":
        plot_autocorr(sources, out, args.dpi, args.obs, args.discard, args.S, args.max_lag)
    elif cmd == "weights":
        plot_weights(sources, out, args.dpi, args.discard)
    elif cmd == "rejections":
        plot_rejections(sources, out, args.dpi, args.discard)
    elif cmd == "magnetization":
        plot_magnetization(sources, out, args.dpi, args.discard)
    elif cmd == "all":
        made = 0
        if logs:
            plot_train(logs, out, args.dpi)
            made += 1
        if any({"G", "C"} & set(s.sf.observable_names) for s in sources):
            plot_correlators(sources, out, args.dpi, args.discard)
            made += 1
        chains = [s for s in sources if s.kind != "flow-importance"]
        if any(args.obs in s.sf.observable_names for s in chains):
            plot_autocorr([s for s in chains if args.obs in s.sf.observable_names], out,
                          args.dpi, args.obs, args.discard, args.S)
            made += 1
        if any("log_w" in s.sf.extra_names for s in sources):
            plot_weights(sources, out, args.dpi, args.discard)
            made += 1
        if chains:
            plot_rejections(chains, out, args.dpi, args.discard)
            made += 1
        if any("M" in s.sf.observable_names for s in sources):
            plot_magnetization(sources, out, args.dpi, args.discard)
            made += 1
        if made == 0:
            raise C.fail(f"{', '.join(args.paths)}: nothing to plot.")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return C.main_guard("plots.py", lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
