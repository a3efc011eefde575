"""Command line: ``lattice-flows {hmc,train,sample,run,analyze,info,export} ...``.

* ``hmc``, ``train``, ``sample`` CONFIG: HMC production, flow training, flow production
  (independence Metropolis, importance sampling, or composite flow + HMC sweeps); each
  resumes its run folder;
* ``run`` CONFIG: train -> sample (-> hmc) -> analyze, skipping completed stages;
* ``analyze`` PATH: observables with Gamma-method errors; ``info`` FILE: metadata of a sample
  file (``--verify`` checks it); ``export`` PATH: one self-contained sample file.

Wires commands to the library; holds no physics. The computing commands (``hmc``, ``train``,
``sample``, ``run``) opt in to the allocator setting of :mod:`lattice_flows.malloc`. User
errors (bad config, bad file, locked folder) print one paragraph to stderr and exit with
status 2, without a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lattice_flows._version import __version__


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set hmc.n_traj=500 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _setup(args: argparse.Namespace):
    """Load the config, make the run folder, set up logging; returns (cfg, world)."""
    from lattice_flows.config import load_config
    from lattice_flows.logs import log, setup_logging

    world = _WORLD
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank = 0 if world is None else world.rank
    setup_logging(args.verbose, rank=rank, logfile=run_dir / "run.log" if rank == 0 else None)
    if world is not None:
        log.info(
            "MPI world of %d ranks (%d on this node); rank %d", world.size, world.local_size, rank
        )
    return cfg, world


def _cmd_hmc(args: argparse.Namespace) -> int:
    from lattice_flows.mcmc.hmc_run import run_hmc

    cfg, world = _setup(args)
    path = run_hmc(cfg, progress=not args.no_progress, world=world)
    if world is None or world.is_root:
        print(path)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from lattice_flows.training.trainer import train_flow

    cfg, world = _setup(args)
    result = train_flow(cfg, progress=not args.no_progress, world=world)
    if world is None or world.is_root:
        print(json.dumps(result.as_dict()))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from lattice_flows.mcmc.flow_run import run_sample

    cfg, world = _setup(args)
    path = run_sample(cfg, progress=not args.no_progress, world=world)
    if world is None or world.is_root:
        print(path)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from lattice_flows.pipeline import run_pipeline

    cfg, world = _setup(args)
    report = run_pipeline(cfg, progress=not args.no_progress, world=world)
    if world is None or world.is_root:
        print(report)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from lattice_flows.table_format import format_table, rows_to_json
    from lattice_flows.tables import analyze_samples, find_sample_files
    from lattice_flows.io.sample_reader import SampleFile

    out = []
    for path in find_sample_files(args.path):
        sf = SampleFile(path)
        rows = analyze_samples(sf, discard=args.discard, S=args.S)
        meta = {"file": str(path), "kind": sf.attrs.get("kind"), "n_saved": sf.n_saved,
                "n_chains": sf.n_chains, "lattice_shape": list(sf.lattice_shape),
                "m2": sf.attrs.get("m2"), "lam": sf.attrs.get("lam"), "discard": rows.discard,
                "S": args.S}
        if args.json:
            out.append(json.loads(rows_to_json(rows, meta)))
        else:
            title = (f"{path}  [{meta['kind']}, lattice {sf.lattice_shape}, m2={meta['m2']}, "
                     f"lam={meta['lam']}, {sf.n_saved} rows x {sf.n_chains} chains, "
                     f"Gamma-method S={args.S}]")
            print(format_table(rows, title, sf.n_saved))
            print()
    if args.json:
        print(json.dumps(out[0] if len(out) == 1 else out, indent=1))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from lattice_flows.io.sample_reader import SampleFile
    from lattice_flows.io.sample_verify import verify_sample_file

    sf = SampleFile(args.file)
    if args.verify:
        problems = verify_sample_file(args.file)
        for p in problems:
            print(f"FAIL {p}")
        if problems:
            print(f"{args.file}: {len(problems)} problem(s) found", file=sys.stderr)
            return 1
        print(f"OK {args.file}: {sf.n_saved} rows x {sf.n_chains} chains; shapes, chunk "
              "checksums and actions verified")
        return 0
    info = dict(sf.attrs)
    info.pop("config", None)
    info["observables"] = sf.observable_names
    info["extra_datasets"] = sf.extra_names
    if args.json:
        info["config"] = sf.config_text
        print(json.dumps(info, indent=1, default=str))
        return 0
    print(f"{sf.path}")
    for k, v in info.items():
        print(f"  {k:<16} {v}")
    print("  config:")
    for line in sf.config_text.splitlines():
        print(f"    {line}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from lattice_flows.tables import find_sample_files
    from lattice_flows.io.export import export_sample_file, export_target

    files = find_sample_files(args.path)
    for path in files:
        print(export_sample_file(path, export_target(path, args.out, Path(args.path).is_dir())))
    return 0


_WORLD = None  # the MPI world of this process (None: a single process)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lattice-flows",
        description="Normalizing flows and HMC for scalar phi^4 lattice field theory.",
    )
    parser.add_argument("--version", action="version", version=f"lattice_flows {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("hmc", help="HMC production run (resumes an existing run folder)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_hmc)

    p = sub.add_parser("train", help="train a flow (resumes an existing run folder)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="flow production: independence Metropolis, importance "
                       "sampling or composite (flow steps + HMC; sample.mode)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("run", help="the whole pipeline: train -> sample (-> hmc) -> analyze, "
                       "skipping completed stages")
    _add_config_args(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("analyze", help="table of observables with Gamma-method errors and tau_int")
    p.add_argument("path", help="a run folder or a sample HDF5 file")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
    p.add_argument("--discard", type=int, default=None,
                   help="drop the first N saved rows (default: flow chains drop a burn-in, the "
                        "rows up to every chain's first accepted proposal, 1-50%% of the rows; "
                        "HMC and importance files 0)")
    p.add_argument("--S", type=float, default=1.5, help="Gamma-method windowing parameter S")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("info", help="metadata of a sample file (--verify: check it)")
    p.add_argument("file", help="a sample HDF5 file (samples.h5, importance.h5, hmc.h5, a rank file)")
    p.add_argument("--verify", action="store_true",
                   help="check shapes, committed row counts and the checksum of every chunk")
    p.add_argument("--json", action="store_true",
                   help="machine-readable JSON output (attributes and the resolved config)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("export", help="write one self-contained sample file (no parts folder, "
                       "no rank files) that any HDF5 reader reads whole")
    p.add_argument("path", help="a sample file, merged view or run folder (all its sample files)")
    p.add_argument("out", nargs="?", default=None,
                   help="output file, or folder (default: export/ beside the source)")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lattice_flows.config import ConfigError
    from lattice_flows.io.checkpoint import CheckpointError
    from lattice_flows.io.atomic import StorageError
    from lattice_flows.io.sample_format import DataFileError
    from lattice_flows.io.lock import RunLockedError
    from lattice_flows.mcmc.flow_run import SamplingError
    from lattice_flows.training.train_step import TrainingError

    global _WORLD
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("hmc", "train", "sample", "run"):
        from lattice_flows.distributed import World

        from lattice_flows.malloc import keep_freed_memory

        keep_freed_memory()  # the commands that compute opt in to the allocator setting (malloc.py)
        world = World.from_environment()
        _WORLD = world if world.size > 1 else None
    from lattice_flows.signals import StopRequested, graceful_stop

    try:
        with graceful_stop():
            return int(args.func(args) or 0)
    except StopRequested as exc:
        print(f"lattice-flows {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except (ConfigError, DataFileError, CheckpointError, RunLockedError, TrainingError,
            SamplingError) as exc:
        print(f"lattice-flows {args.command}: error: {exc}", file=sys.stderr)
        _abort_world(2)
        return 2
    except StorageError as exc:
        print(f"lattice-flows {args.command}: error: {exc}", file=sys.stderr)
        _abort_world(2)
        return 2
    except OSError as exc:  # e.g. a read-only or vanished run folder, a lock or log file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"lattice-flows {args.command}: error: {where}{exc.strerror or exc}. Data committed "
              "before stays valid; fix the folder (space, permissions) and rerun the same command.",
              file=sys.stderr)
        _abort_world(2)
        return 2
    except KeyboardInterrupt:
        print(f"lattice-flows {args.command}: interrupted", file=sys.stderr)
        _abort_world(130)
        return 130
    except BaseException:
        _abort_world(1, traceback_first=True)
        raise
    finally:
        if _WORLD is not None:
            _WORLD.close()
            _WORLD = None


def _abort_world(code: int, traceback_first: bool = False) -> None:
    """One failing rank must not leave the others waiting in a collective forever."""
    if _WORLD is not None and _WORLD.comm is not None:
        sys.stderr.flush()
        if traceback_first:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        _WORLD.comm.Abort(code)


if __name__ == "__main__":
    raise SystemExit(main())
