"""``lattice-flows run``: train -> sample -> (hmc) -> analyze, skipping completed stages.

Each stage is resumable on its own (see the trainer and the production runs), so rerunning
the pipeline after a crash continues where it stopped. The analysis writes
``analysis.json`` and ``analysis.md`` into the run folder; with an ``hmc`` section in the config
the HMC baseline runs in the same folder and ``comparison.md`` holds the flow-vs-HMC table
(values, z-scores, tau_int and cost ratios, each flow / HMC with HMC as the reference, so a
ratio < 1 means the flow is cheaper or decorrelates faster; training cost amortised over the
samples produced).
Every output file is written atomically (:func:`lattice_flows.io.runfolder.write_text_atomic`):
a kill leaves the previous version or the new one, never a truncated file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lattice_flows.comparison import compare, format_comparison
from lattice_flows.table_format import format_table
from lattice_flows.tables import analyze_samples
from lattice_flows.config import Config, ConfigError
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.runfolder import write_text_atomic
from lattice_flows.logs import log


def run_pipeline(cfg: Config, progress: bool = True, world=None) -> str:
    """Run every stage the config has; return the report text (also written to the run folder)."""
    if cfg.flow is None or cfg.train is None or cfg.sample is None:
        missing = [s for s in ("flow", "train", "sample") if getattr(cfg, s) is None]
        raise ConfigError(
            f"config section '{missing[0]}' is missing; 'lattice-flows run' needs flow, train and sample."
        )
    from lattice_flows.mcmc.flow_run import run_sample
    from lattice_flows.training.trainer import train_flow

    run_dir = Path(cfg.output.dir)
    t0 = time.perf_counter()
    stages = {}
    t = time.perf_counter()
    res = train_flow(cfg, progress=progress, world=world)
    stages["train"] = time.perf_counter() - t
    t = time.perf_counter()
    flow_file = run_sample(cfg, progress=progress, world=world)
    stages["sample"] = time.perf_counter() - t
    files = [flow_file]
    names = [f"flow {cfg.sample.mode}"]
    if cfg.hmc is not None:
        from lattice_flows.mcmc.hmc_run import run_hmc

        t = time.perf_counter()
        files.append(run_hmc(cfg, progress=progress, world=world))
        names.append("HMC")
        stages["hmc"] = time.perf_counter() - t
    if world is not None and not world.is_root:
        return ""
    t = time.perf_counter()
    parts = []
    out = {"train": res.as_dict(), "files": {}}
    tables = []
    for name, f in zip(names, files):
        sf = SampleFile(f)
        rows = analyze_samples(sf)
        tables.append(rows)
        parts.append(format_table(rows, f"## {name}: {f}", sf.n_saved))
        out["files"][name] = {"file": str(f), "observables": [r.as_dict() for r in rows]}
    report = "\n\n".join(parts)
    if len(files) > 1:
        # HMC is the reference: every ratio reads flow / HMC (< 1: the flow is cheaper)
        order = [1, 0]
        c_files, c_names, c_rows = ([x[i] for i in order] for x in (files, names, tables))
        cmp = compare(c_files, c_names, rows=c_rows)
        training = {1: (res.train_device_s, res.device_kind)}  # device-s, like the sampling's
        cmp_amortised = compare(c_files, c_names, extra_cost=training, rows=c_rows)
        text = ("## flow vs HMC (sampling cost only)\n\n" + format_comparison(cmp)
                + "\n\n## flow vs HMC (flow training cost included)\n\n" + format_comparison(cmp_amortised))
        write_text_atomic(run_dir / "comparison.md", text + "\n")
        out["comparison"] = cmp
        report += "\n\n" + text
    stages["analyze"] = time.perf_counter() - t
    out["wall_s"] = {**stages, "total": time.perf_counter() - t0}
    write_text_atomic(run_dir / "analysis.json", json.dumps(out, indent=1, default=str))
    write_text_atomic(run_dir / "analysis.md", report + "\n")
    log.info("pipeline done in %.1f s: %s", time.perf_counter() - t0,
             ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
    return report
