"""Every command line written in README.md, jobs/README.md and the usage comments of jobs/*
runs, so that a documented command cannot rot (issue 12: ``lattice-flows sample
configs/tutorial_flow.yaml`` exited 2 for a config with no ``sample`` section).

The lines are extracted from the documents (tests/integration/doc_commands.py), not copied
here: a new documented line is covered automatically. Each scenario (one shell block, or one
script's usage lines) runs in a fresh folder holding copies of configs/ and jobs/, line after
line as a reader would type them, with ``--set`` overrides appended that shrink every section
of the line's config to seconds (doc_commands.SHRINK). ``lattice-flows ...`` lines run through
the CLI entry point in this process; every other line runs in bash with:

* ``srun``: ``mpiexec -n $SLURM_NTASKS`` (as in tests/mpi/test_mpi.py);
* ``sbatch``: runs the job script at once, with ``SLURM_JOB_ID``/``SLURM_NTASKS=2`` set, refuses
  a job whose ``#SBATCH --output`` folder is missing (SLURM does not create it), honours
  ``--parsable`` and ``--dependency=afterok:<id>`` (a job whose dependency failed stays pending,
  as on SLURM), and records every job's exit status; the scenario fails if one is not 0.

A line that cannot run here must be in :data:`NOT_RUN` with the reason; an entry that matches
no documented line fails too, so the list cannot rot either. Files a line promises with
``# -> a.h5, b.json`` must exist afterwards, and every sample file written must verify.

Besides, every shipped config (configs/**/*.yaml) runs each stage it has a section for.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lattice_flows.cli import main
from lattice_flows.config import load_config
from lattice_flows.io.sample_verify import verify_sample_file
from tests.integration.doc_commands import REPO, DocLine, Scenario, all_scenarios, shrink_overrides

MPIEXEC = shutil.which("mpiexec")
PYBIN = Path(sys.executable).parent

#: documented lines that are not run, with the reason (regex on the command)
NOT_RUN = {
    r"^pip install\b": "installs packages: the test runs in the environment it produces",
    r"^MPICC=.* pip install\b": "builds mpi4py against a site MPI (cluster set-up, needs the network)",
    r"^module load\b": "environment modules exist on clusters only",
    r"^python -m venv\b": "creates and activates a new virtual environment (cluster set-up)",
    r"^pytest\b": "the test suite itself",
}

#: what a scenario's documentation says must exist before its lines (reason, shell commands)
PREREQUISITES = {
    "jobs/hmc.sbatch": ("the header: 'Create the log folder before submitting: mkdir -p logs'",
                        ["mkdir -p logs"]),
    "jobs/train.sbatch": ("the header: 'Create the log folder before submitting: mkdir -p logs'",
                          ["mkdir -p logs"]),
    "jobs/sample.sbatch": ("the header: 'with a trained flow' (output.dir/flow.pt) and "
                           "'mkdir -p logs'", ["mkdir -p logs", "TRAINED_FLOW"]),
}

SCENARIOS = all_scenarios()


def _not_run_reason(line: DocLine) -> str | None:
    for pattern, reason in NOT_RUN.items():
        if re.search(pattern, line.command):
            return reason
    return None


def test_extraction_finds_the_documented_commands():
    """The extractor sees every document and the lines of issue 12 (else nothing is tested)."""
    names = {s.name.split(":")[0] for s in SCENARIOS}
    assert {"README.md", "jobs/README.md", "jobs/hmc.sbatch", "jobs/train.sbatch",
            "jobs/sample.sbatch", "jobs/local.sh", "jobs/submit_pipeline.sh"} <= names
    commands = [" ".join(l.command.split()) for s in SCENARIOS for l in s.lines]
    for expected in ("lattice-flows sample configs/tutorial_flow.yaml",
                     "lattice-flows sample configs/tutorial_flow.yaml --set sample.mode=importance",
                     "jobs/submit_pipeline.sh configs/tutorial_flow.yaml"):
        assert expected in commands
    # every entry of the not-run list still names a documented line
    for pattern in NOT_RUN:
        assert any(re.search(pattern, c) for c in commands), f"NOT_RUN entry {pattern!r} is stale"


# ------------------------------------------------------------------ the shims and the runner


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


SBATCH_SHIM = r"""#!/bin/bash
# sbatch stand-in: runs the job now (SLURM would run it later), records its exit status
parsable=0; dep=""
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in --parsable) parsable=1;; --dependency=*) dep="${1#--dependency=}";; esac; shift
done
script="$1"; shift
id=$((1000 + $(ls "$SHIM_STATE" | wc -l) + 1))
if [[ $parsable == 1 ]]; then echo "$id;shimcluster"; else echo "Submitted batch job $id"; fi
if [[ -n "$dep" ]]; then
  jid="${dep#afterok:}"
  if [[ "$dep" != afterok:* || "$(cat "$SHIM_STATE/$jid" 2>/dev/null)" != "rc=0" ]]; then
    echo "pending: DependencyNeverSatisfied ($dep) $script $*" > "$SHIM_STATE/$id"; exit 0
  fi
fi
out=$(sed -n 's/^#SBATCH --output=//p' "$script" | head -n 1)
dir=$(dirname "${out:-./x}")
if [[ ! -d "$dir" ]]; then
  echo "job failed: #SBATCH --output folder '$dir' does not exist: $script $*" > "$SHIM_STATE/$id"
  exit 0
fi
SLURM_JOB_ID=$id SLURM_NTASKS=2 SLURM_CPUS_PER_TASK=1 bash "$script" "$@" > "$dir/shim-$id.out" 2>&1
rc=$?
if [[ $rc == 0 ]]; then echo "rc=0" > "$SHIM_STATE/$id"
else { echo "job failed: rc=$rc: $script $*"; cat "$dir/shim-$id.out"; } > "$SHIM_STATE/$id"; fi
exit 0
"""


def _shim_env(tmp: Path) -> dict:
    bindir = tmp / "bin"
    bindir.mkdir()
    state = tmp / "jobs-state"
    state.mkdir()
    _exe(bindir / "srun", f'#!/bin/bash\nexec "{MPIEXEC}" -n "$SLURM_NTASKS" "$@"\n')
    _exe(bindir / "sbatch", SBATCH_SHIM)
    env = dict(os.environ, PYTHONUNBUFFERED="1", MKL_NUM_THREADS="1",
               PATH=f"{bindir}{os.pathsep}{PYBIN}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               SHIM_STATE=str(state), OMP_NUM_THREADS="1")
    env.pop("LATTICE_FLOWS_NO_MPI", None)
    for k in [k for k in env if k.startswith("SLURM_")]:
        env.pop(k)
    return env


def _line_config(words: list[str], cwd: Path) -> Path | None:
    """The config a line runs with: its first ``*.yaml`` word, a ``CONFIG=`` prefix, or the
    default of the jobs/ script it calls."""
    for w in words:
        if w.endswith(".yaml") and not w.startswith("CONFIG="):
            return cwd / w
    for w in words:
        if w.startswith("CONFIG="):
            return cwd / w.split("=", 1)[1]
    for w in words:
        if w.startswith("jobs/") and (cwd / w).is_file():
            m = re.search(r'CONFIG="\$\{CONFIG:-([^}]+)\}"', (cwd / w).read_text())
            if m:
                return cwd / m.group(1)
    return None


def _run_line(line: DocLine, cwd: Path, env: dict) -> None:
    words = shlex.split(line.command)
    config = _line_config(words, cwd)
    doc_sets = [v for k, v in zip(words, words[1:]) if k == "--set"]
    extra = shrink_overrides(config, doc_sets) if config is not None and config.is_file() else []
    where = f"{line.source}: `{line.command}`"
    t0 = time.perf_counter()
    if words[0] == "lattice-flows" and not re.search(r"[|;&$<>`]", line.command):  # plain CLI call
        out, err = io.StringIO(), io.StringIO()
        old = Path.cwd()
        os.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(words[1:] + (["--no-progress"] if config else []) + extra)
        finally:
            os.chdir(old)
        assert rc == 0, f"{where} exited {rc}:\n{out.getvalue()}\n{err.getvalue()}"
    else:
        text = line.command + "".join(" " + shlex.quote(a) for a in extra)
        proc = subprocess.run(["bash", "-c", text], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, \
            f"{where} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        for job in sorted(Path(env["SHIM_STATE"]).iterdir()):
            status = job.read_text()
            assert status.strip() == "rc=0", f"{where}: SLURM job {job.name}: {status[-3000:]}"
    print(f"{time.perf_counter() - t0:6.1f} s  {where}")
    if line.promises:
        sets = doc_sets + [v for k, v in zip(extra, extra[1:]) if k == "--set"]
        run_dir = cwd / load_config(config, sets).output.dir
        for name in line.promises:
            path = cwd / name if "/" in name else run_dir / name
            assert path.exists(), f"{where} promises {name}, but {path} does not exist"


@pytest.fixture(scope="session")
def trained_tutorial_flow(tmp_path_factory) -> Path:
    """runs/tutorial_flow of `lattice-flows train configs/tutorial_flow.yaml`, shrunk."""
    ws = tmp_path_factory.mktemp("trained")
    shutil.copytree(REPO / "configs", ws / "configs")
    _run_line(DocLine("fixture", "lattice-flows train configs/tutorial_flow.yaml"), ws, {})
    return ws / "runs" / "tutorial_flow"


def _param(s: Scenario):
    # the usage lines in the headers of jobs/* are examples of scripts that tests/mpi/test_mpi.py
    # runs through the same shims on every default run; with 2 ranks on 2 cores they cost ~2 min
    marks = [pytest.mark.slow] if not s.name.split(":")[0].endswith(".md") else []
    return pytest.param(s, id=s.name, marks=marks)


@pytest.mark.mpi
@pytest.mark.parametrize("scenario", [_param(s) for s in SCENARIOS])
def test_documented_command_lines_run(scenario: Scenario, tmp_path, request):
    lines = [l for l in scenario.lines if _not_run_reason(l) is None]
    if not lines:
        pytest.skip("every line is in NOT_RUN: " + "; ".join(
            f"{l.command} ({_not_run_reason(l)})" for l in scenario.lines))
    if MPIEXEC is None and any(not l.command.startswith("lattice-flows") for l in lines):
        pytest.skip("mpiexec is not on PATH (pip install mpi4py mpich)")
    if not (PYBIN / "lattice-flows").exists() and any(not l.command.startswith("lattice-flows") for l in lines):
        pytest.skip(f"the console script lattice-flows is not installed next to {sys.executable}")
    ws = tmp_path / "repo"
    ws.mkdir()
    shutil.copytree(REPO / "configs", ws / "configs")
    shutil.copytree(REPO / "jobs", ws / "jobs")
    env = _shim_env(tmp_path)
    for pre in PREREQUISITES.get(scenario.name, ("", []))[1]:
        if pre == "TRAINED_FLOW":
            flow = request.getfixturevalue("trained_tutorial_flow")
            shutil.copytree(flow, ws / "runs" / "tutorial_flow")
        else:
            subprocess.run(["bash", "-c", pre], cwd=ws, env=env, check=True)
    for line in lines:
        _run_line(line, ws, env)
    for path in sorted(ws.glob("runs/**/*.h5")):
        if path.name != "train.h5" and not path.parent.name.endswith(".parts"):
            assert verify_sample_file(path) == [], path


SHIPPED = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", SHIPPED)
def test_every_shipped_config_runs_every_stage_it_has(config, tmp_path, monkeypatch, capsys):
    """What the README says a shipped config is for: its hmc section runs `hmc`, its flow and
    train sections `train`, its sample section `sample` in both modes, and `analyze` reads the
    folder (the ladder rungs run alone: the previous rung's flow is missing)."""
    import yaml

    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((tmp_path / config).read_text())
    assert "lattice" in raw and "action" in raw and "output" in raw, config
    commands = []
    if "hmc" in raw:
        commands.append(["hmc"])
    if "flow" in raw or "train" in raw:
        assert "flow" in raw and "train" in raw, f"{config}: flow and train come together"
        # README/jobs: `train CONFIG`, then `sample CONFIG` with the same file (issue 12)
        assert "sample" in raw, f"{config}: a flow config needs the sample section `sample` reads"
        commands.append(["train"])
    if "sample" in raw:
        assert "train" in raw, f"{config}: a sample section needs the flow that train writes"
        commands += [["sample"], ["sample", "--set", "sample.mode=importance"]]
    assert commands, f"{config} has no stage to run"
    shrink = shrink_overrides(tmp_path / config)
    for cmd in commands:
        rc = main([cmd[0], config, "--no-progress", *shrink, *cmd[1:]])
        assert rc == 0, f"lattice-flows {' '.join(cmd)} {config}: exit {rc}\n{capsys.readouterr().err}"
    if "hmc" in raw or "sample" in raw:
        assert main(["analyze", raw["output"]["dir"]]) == 0
