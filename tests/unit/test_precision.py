"""lattice_flows.devices.ieee_float32: log densities that TF32 cannot touch (issue 16).

On the CPU the switch changes no numbers, but the flags must really be set where the flow's
convolutions run: a forward hook on the conditioner's convolutions records them during
Flow.sample / Flow.log_prob / Flow.inverse, and they must be back to the previous values after
(also after an exception), with no warning on the way.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from lattice_flows.config import FlowConfig
from lattice_flows.devices import _precision_switches, ieee_float32
from lattice_flows.flows import build_flow
from lattice_flows.flows.periodic_conv import CONV_TYPES

NEW_API = bool(_precision_switches())


def flags() -> tuple:
    """The float32 precision settings of convolutions and matmuls, in the API this torch has."""
    if NEW_API:
        return tuple(s.fp32_precision for s in _precision_switches())
    return (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


IEEE = ("ieee",) * len(_precision_switches()) if NEW_API else (False, False)


@pytest.fixture
def tf32_on():
    """Start from TF32 allowed everywhere (the GPU default for convs, and more), so that a
    no-op context manager or an unrestored flag shows; the previous settings come back."""
    before = flags()
    if NEW_API:
        for s in _precision_switches():
            s.fp32_precision = "tf32"
    else:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield flags()
    if NEW_API:
        for s, v in zip(_precision_switches(), before):
            s.fp32_precision = v
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def flow_with_recorder(dtype=torch.float32):
    torch.manual_seed(0)
    flow = build_flow(FlowConfig(n_layers=2, hidden_channels=(4,), fourier_layer=True,
                                 zero_mode_layer=True), (4, 4), m2=1.0).to(dtype)
    seen: list[tuple] = []
    for m in flow.modules():
        if isinstance(m, CONV_TYPES):
            m.register_forward_hook(lambda mod, args, out: seen.append(flags()))
    return flow, seen


def test_every_pass_of_the_flow_runs_its_convolutions_in_ieee_float32(tf32_on):
    """sample (forward), log_prob and inverse: one map in every pass, so log q of a sample and
    log_prob of it agree to float32 rounding on a GPU too (flows/flow.py, TF32 rule)."""
    assert tf32_on != IEEE
    flow, seen = flow_with_recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither API may warn (deprecations included)
        with torch.no_grad():
            phi, log_q = flow.sample(8)
            during_sample = list(seen)
            seen.clear()
            log_p = flow.log_prob(phi)
            during_log_prob = list(seen)
            seen.clear()
            flow.inverse(phi)
            during_inverse = list(seen)
    assert during_sample and all(f == IEEE for f in during_sample)
    assert during_log_prob and all(f == IEEE for f in during_log_prob)
    assert during_inverse and all(f == IEEE for f in during_inverse)
    assert flags() == tf32_on  # restored
    torch.testing.assert_close(log_p, log_q, rtol=0, atol=1e-4)


def test_settings_are_restored_after_an_exception_and_when_nested(tf32_on):
    flow, _ = flow_with_recorder()
    with pytest.raises(ValueError, match="is not allowed"):
        flow.log_prob(torch.zeros(2, 4, 4, 4))  # wrong shape: raised inside the scope
    assert flags() == tf32_on
    with pytest.raises(RuntimeError, match="inside"):
        with ieee_float32():
            assert flags() == IEEE
            raise RuntimeError("inside")
    assert flags() == tf32_on
    with ieee_float32():
        with ieee_float32():
            assert flags() == IEEE
        assert flags() == IEEE  # the inner exit restores the outer scope's settings
    assert flags() == tf32_on


def test_the_default_settings_come_back_and_the_legacy_flags_stay_readable():
    """Outside the scope torch's own defaults are untouched, so the legacy getters (which
    raise on a mix of the APIs) still answer after a log_prob."""
    before = flags()
    legacy = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    flow, _ = flow_with_recorder()
    with torch.no_grad():
        flow.log_prob(flow.sample(2)[0])
    assert flags() == before
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == legacy
