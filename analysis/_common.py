"""Helpers shared by the analysis scripts: input resolution, labels, error exits, JSON output.

The scripts take run folders or HDF5 files. A run folder stands for its sample files (the
order of :data:`lattice_flows.tables.SAMPLE_FILE_NAMES`: samples.h5, importance.h5,
hmc.h5) and, for the training plot, its ``train.h5``. A bad or foreign file
raises :class:`lattice_flows.io.sample_format.DataFileError` (the message names the path and the
reason); :func:`main_guard` turns it into one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

os.environ.setdefault("MPLBACKEND", "Agg")

from lattice_flows.io.sample_format import DataFileError  # noqa: E402
from lattice_flows.io.sample_reader import SampleFile  # noqa: E402

KIND_LABELS = {"hmc": "HMC", "flow-mcmc": "flow MCMC", "flow-importance": "flow IS"}


@dataclass
class Source:
    """One sample file with a human label."""

    path: Path
    label: str
    sf: SampleFile

    @property
    def kind(self) -> str:
        return str(self.sf.attrs.get("kind", "?"))

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def fail(message: str) -> DataFileError:
    """The exception to raise for a user error; the message must name the path and the reason."""
    return DataFileError(message)


def main_guard(prog: str, func: Callable[[], int | None]) -> int:
    """Run ``func``; a DataFileError prints ``prog: error: <message>`` and returns 2."""
    try:
        return int(func() or 0)
    except DataFileError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into `head`
        return 0


def parse_names(text: str | None) -> list[str] | None:
    """``--names "flow,HMC"`` -> ["flow", "HMC"]."""
    if not text:
        return None
    return [s.strip() for s in text.split(",")]


def _expand(path: str | Path) -> list[Path]:
    from lattice_flows.tables import find_sample_files

    return find_sample_files(path)


def load_sources(paths: Sequence[str | Path], names: Sequence[str] | None = None,
                 kinds: Iterable[str] | None = None) -> list[Source]:
    """Open every sample file named by ``paths`` (files, or run folders expanded to their sample
    files). ``kinds`` keeps only files of those kinds (files of other kinds are skipped). Labels
    are ``names`` (one per resulting file) or derived from the folder name and the file kind."""
    files: list[Path] = []
    for p in paths:
        for f in _expand(p):
            if f not in files:
                files.append(f)
    sources = [Source(f, "", SampleFile(f)) for f in files]
    if kinds is not None:
        kinds = set(kinds)
        sources = [s for s in sources if s.kind in kinds]
    if names:
        if len(names) != len(sources):
            raise fail(
                f"--names gives {len(names)} name(s) but the inputs resolve to {len(sources)} "
                f"sample file(s): {', '.join(str(s.path) for s in sources)}."
            )
        for s, n in zip(sources, names):
            s.label = n
    else:
        _auto_labels(sources)
    return sources


def _auto_labels(sources: list[Source]) -> None:
    folders = {s.run_dir for s in sources}
    for s in sources:
        kind = KIND_LABELS.get(s.kind, s.kind)
        s.label = kind if len(folders) == 1 else f"{s.run_dir.name}: {kind}"
    # disambiguate identical labels (two files of one kind in one folder, e.g. merged + samples)
    seen: dict[str, int] = {}
    for s in sources:
        seen[s.label] = seen.get(s.label, 0) + 1
    for s in sources:
        if seen[s.label] > 1:
            s.label = f"{s.label} ({s.path.name})"


def find_train_logs(paths: Sequence[str | Path]) -> list[Path]:
    """``train.h5`` of each run folder, or the file itself."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            f = p / "train.h5"
            if not f.exists():
                raise fail(f"{p}: no train.h5 in this run folder (not a flow training run).")
            out.append(f)
        elif p.exists():
            out.append(p)
        else:
            raise fail(f"{p}: no such file or run folder.")
    return out


def read_train_cost(run_dir: Path) -> tuple[float, str]:
    """The training's device-seconds and device kind (``train_device_s``, ``device_kind``) from
    ``train_summary.json`` of a flow run folder; a summary written before the clocks has only
    ``train_cpu_s``, of a CPU run: device-s = CPU-s, device kind ``cpu``."""
    f = run_dir / "train_summary.json"
    if not f.exists():
        raise fail(f"{f}: no such file; --train-cost needs the flow's training summary next to "
                   "its sample file.")
    try:
        summary = json.loads(f.read_text())
        seconds = float(summary.get("train_device_s", summary["train_cpu_s"]))
        kind = str(summary.get("device_kind", "cpu"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise fail(f"{f}: cannot read 'train_device_s' or 'train_cpu_s' "
                   f"({type(exc).__name__}: {exc}).") from None
    return seconds, kind


def jsonable(obj):
    """Replace NaN/inf by None (strict JSON), Paths and numpy scalars by plain values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (ValueError, AttributeError):
            obj = obj.tolist()
            return jsonable(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n")


def out_dir(path: str | Path) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def fmt_err(value: float, error: float) -> str:
    """``value ± error`` with the error to 2 significant digits and the value to match."""
    if not (math.isfinite(value) and math.isfinite(error)) or error <= 0:
        return f"{value:.6g}" if error == 0 else f"{value:.6g} ± {error:.2g}"
    digits = max(0, 1 - int(math.floor(math.log10(error))))
    return f"{value:.{digits}f} ± {error:.{digits}f}" if digits < 12 else f"{value:.6g} ± {error:.2g}"
