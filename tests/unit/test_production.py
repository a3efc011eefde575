"""The production driver (lattice_flows.runtime.production) with a sampler that supplies only its
advance step: a Gaussian random walk on the lattice, a row every SAVE_EVERY steps (commit points
only there, as HMC's save groups). Real files (SampleWriter, checkpoints), a real SIGTERM to this
process inside graceful_stop. Checks: chunked commits of output.chunk_rows rows, the checkpoint
after each commit, a stop served at the next commit point (not in the middle of a save group),
and the resumed run equal to an uninterrupted one element for element."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lattice_flows.config import config_from_dict
from lattice_flows.io.checkpoint import load_checkpoint, save_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.observables import measure
from lattice_flows.runtime.clock import ZERO, Seconds
from lattice_flows.runtime.production import Advance, resumed_seconds, run_production
from lattice_flows.signals import StopRequested, graceful_stop
from lattice_flows.theory.phi4 import Phi4Action
from tests.conftest import assert_same_samples, check_run_folder, tiny_hmc_raw

SAVE_EVERY = 3
N_STEPS = 40  # 13 rows; chunk_rows 7 (tiny_hmc_raw): a full chunk, then the last 6 rows


class Walk:
    """phi <- phi + 0.1 N(0, 1) per step; ``stop_at``: send SIGTERM to this process in that step."""

    kind = "walk"
    device = torch.device("cpu")

    def __init__(self, cfg, stop_at: int | None = None) -> None:
        self.cfg, self.stop_at = cfg, stop_at
        self.n_chains, self.total = cfg.hmc.n_chains, N_STEPS
        self.action = Phi4Action(cfg.action.m2, cfg.action.lam, cfg.lattice.ndim)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.advanced = 0

    def start(self, state, ckpt_path: Path) -> None:
        if state is None:
            self.step, self.seconds, self.device_kind = 0, ZERO, "cpu"
            self.phi = torch.zeros((self.n_chains, *self.cfg.lattice.shape), dtype=torch.float64)
        else:
            self.step, self.phi = state["step"], state["phi"]
            self.seconds, self.device_kind = resumed_seconds(state, self.device)
            self.gen.set_state(state["rng"])

    def rows_done(self) -> int:
        return self.step // SAVE_EVERY

    def file_attrs(self) -> dict:
        return {"walk_width": 0.1}

    def row_specs(self) -> dict:
        return {}

    def advance(self) -> Advance:
        self.phi = self.phi + 0.1 * torch.randn(self.phi.shape, generator=self.gen, dtype=torch.float64)
        self.step += 1
        self.advanced += 1
        if self.step == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.step % SAVE_EVERY:
            return Advance(can_commit=False)
        obs = measure(self.phi, self.action, self.cfg.output.store_G)
        row = {"configs": self.phi.to(torch.float32).numpy(),
               "action": self.action(self.phi).numpy(),
               "accepted": torch.ones(self.n_chains, dtype=torch.bool).numpy(),
               **{f"observables/{k}": v.numpy() for k, v in obs.items()}}
        return Advance([row], last=self.step // SAVE_EVERY == N_STEPS // SAVE_EVERY)

    def postfix(self) -> dict | None:
        return None

    def commit_attrs(self) -> dict:
        return {"steps_done": self.step}

    def checkpoint(self) -> dict:
        return {"kind": "walk", "step": self.step, "phi": self.phi.clone(),
                "rng": self.gen.get_state().clone()}

    def finish(self, steps_run: int, seconds: Seconds, samples_path: Path, n_rows: int) -> None:
        self.finished = (steps_run, n_rows)
        self.ran = seconds


def _run(run_dir: Path, producer: Walk) -> Path:
    return run_production(lambda: producer, producer.cfg, run_dir, None, base="walk", stage="hmc",
                          lock_name=".lock", desc="walk", progress=False)


def test_driver_commits_chunks_and_checkpoints(tmp_path):
    cfg = config_from_dict(tiny_hmc_raw(tmp_path / "run"))
    walk = Walk(cfg)
    path = _run(tmp_path / "run", walk)
    sf = SampleFile(path)
    assert sf.n_saved == N_STEPS // SAVE_EVERY and sf.attrs["kind"] == "walk"
    assert sf.attrs["walk_width"] == 0.1 and sf.attrs["steps_done"] == 39  # the last commit point
    assert sorted(p.name for p in (tmp_path / "run" / "walk.h5.parts").glob("*.h5")) == [
        "L0_000000000000-000000000007.h5", "L0_000000000007-000000000013.h5"]
    assert load_checkpoint(tmp_path / "run" / "walk.ckpt")["step"] == 39
    assert walk.finished == (N_STEPS, 13)
    check_run_folder(tmp_path / "run")
    # rerun of a complete run: resumes at step 39 and runs the trailing step without a new row
    again = Walk(cfg)
    _run(tmp_path / "run", again)
    assert again.advanced == 1 and again.finished == (1, 13)


@pytest.mark.parametrize("stop_at", [7, 9])
def test_stop_waits_for_a_commit_point_and_resume_equals_uninterrupted(tmp_path, stop_at):
    cfg = config_from_dict(tiny_hmc_raw(tmp_path / "a"))
    ref = _run(tmp_path / "a", Walk(cfg))
    cfg_b = config_from_dict(tiny_hmc_raw(tmp_path / "b"))
    walk = Walk(cfg_b, stop_at=stop_at)
    with graceful_stop(), pytest.raises(StopRequested) as err:
        _run(tmp_path / "b", walk)
    assert err.value.signum == signal.SIGTERM
    next_commit = -(-stop_at // SAVE_EVERY) * SAVE_EVERY  # 7 -> 9 (inside a save group), 9 -> 9
    assert walk.step == next_commit
    assert load_checkpoint(tmp_path / "b" / "walk.ckpt")["step"] == next_commit
    assert SampleFile(tmp_path / "b" / "walk.h5").n_saved == next_commit // SAVE_EVERY
    check_run_folder(tmp_path / "b")
    _run(tmp_path / "b", Walk(cfg_b))
    assert_same_samples(ref, tmp_path / "b" / "walk.h5")


def test_row_buffer_copies_device_rows_once_per_chunk_with_the_same_bytes():
    """Rows of tensors (as the producers give them) and of numpy arrays (host flags) give the
    arrays a host-side stack of per-row copies gives, dtype and bytes alike."""
    from lattice_flows.runtime.rows import RowBuffer

    g = torch.Generator().manual_seed(1)
    rows = [{"configs": torch.randn(3, 4, 4, generator=g, dtype=torch.float64).to(torch.float32),
             "action": torch.randn(3, generator=g, dtype=torch.float64),
             "accepted": torch.rand(3, generator=g) < 0.5,
             "flags": (torch.rand(3, generator=g) < 0.5).numpy()} for _ in range(5)]
    buf = RowBuffer()
    for row in rows:
        buf.add(row)
    assert buf.n == 5
    got = buf.take()
    assert buf.n == 0 and buf.take() == {}
    for name in rows[0]:
        ref = np.stack([np.asarray(r[name]) for r in rows])
        assert isinstance(got[name], np.ndarray) and got[name].dtype == ref.dtype, name
        np.testing.assert_array_equal(got[name], ref, err_msg=name)


def test_every_commit_and_checkpoint_carries_the_three_clocks(tmp_path):
    """cpu_s, wall_s, device_s and device_kind in the file attributes and the checkpoint; on a
    CPU device-s are the CPU-s (runtime/clock.py); the log's clocks are this process's."""
    cfg = config_from_dict(tiny_hmc_raw(tmp_path / "run"))
    walk = Walk(cfg)
    path = _run(tmp_path / "run", walk)
    attrs, ckpt = SampleFile(path).attrs, load_checkpoint(tmp_path / "run" / "walk.ckpt")
    for rec in (attrs, ckpt):
        assert rec["device_kind"] == "cpu"
        assert rec["device_s"] == rec["cpu_s"] > 0 and rec["wall_s"] > 0
    assert walk.ran.wall_s >= attrs["wall_s"] and walk.ran.device_s == walk.ran.cpu_s


def test_a_checkpoint_with_cpu_s_only_resumes_and_its_clocks_start_from_it(tmp_path):
    """Checkpoints of older versions have ``cpu_s`` only: the resumed run's wall-s and
    device-s start from it (production.resumed_seconds); data equal an uninterrupted run's."""
    cfg_a = config_from_dict(tiny_hmc_raw(tmp_path / "a"))
    ref = _run(tmp_path / "a", Walk(cfg_a))
    cfg_b = config_from_dict(tiny_hmc_raw(tmp_path / "b"))
    with graceful_stop(), pytest.raises(StopRequested):
        _run(tmp_path / "b", Walk(cfg_b, stop_at=18))
    ckpt_path = tmp_path / "b" / "walk.ckpt"
    state = load_checkpoint(ckpt_path)
    old_cpu = 1000.0  # an earlier process's CPU-s, far above what this test spends
    state = {k: v for k, v in state.items() if k not in ("wall_s", "device_s", "device_kind")}
    save_checkpoint({**state, "cpu_s": old_cpu}, ckpt_path)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    _run(tmp_path / "b", Walk(cfg_b))
    spent = {"cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - wall0}
    spent["device_s"] = spent["cpu_s"]
    assert_same_samples(ref, tmp_path / "b" / "walk.h5")
    attrs = SampleFile(tmp_path / "b" / "walk.h5").attrs
    assert attrs["device_kind"] == "cpu"
    for clock in ("cpu_s", "wall_s", "device_s"):  # the old CPU-s plus this process's part
        assert old_cpu < attrs[clock] <= old_cpu + spent[clock], clock


def test_seconds_resumed_on_another_device_kind_say_so():
    seconds, kind = resumed_seconds({"cpu_s": 1.0, "wall_s": 2.0, "device_s": 2.0,
                                     "device_kind": "cuda:NVIDIA H200"}, "cpu")
    assert seconds == Seconds(1.0, 2.0, 2.0) and kind == "cuda:NVIDIA H200+cpu"
    assert resumed_seconds({"cpu_s": 3.0, "device_kind": "cuda:X+cpu"}, "cpu")[1] == "cuda:X+cpu"
