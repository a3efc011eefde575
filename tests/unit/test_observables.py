"""Observables: FFT two-point function against the direct sum, identities between them."""

import math

import pytest
import torch

from lattice_flows.observables import measure, two_point_function
from lattice_flows.theory.phi4 import Phi4Action


@pytest.mark.parametrize("shape", [(6,), (4, 6), (4, 2, 4)])
def test_two_point_function_matches_direct_sum(shape):
    d = len(shape)
    g = torch.Generator().manual_seed(1)
    phi = torch.randn((3, *shape), generator=g, dtype=torch.float64)
    G = two_point_function(phi, d)
    V = math.prod(shape)
    dims = tuple(range(1, d + 1))
    for y in [(0,) * d, (1,) + (0,) * (d - 1), tuple(n // 2 for n in shape), tuple(1 for _ in shape)]:
        shifted = torch.roll(phi, shifts=tuple(-v for v in y), dims=dims)
        direct = (phi * shifted).sum(dims) / V
        torch.testing.assert_close(G[(slice(None), *y)], direct, rtol=1e-12, atol=1e-12)


def test_identities():
    shape = (8, 6)
    phi = torch.randn((5, *shape), dtype=torch.float64)
    S = Phi4Action(-1.0, 2.0, 2)
    o = measure(phi, S)
    V = 48
    torch.testing.assert_close(o["chi2"], o["G"].sum(dim=(1, 2)))
    torch.testing.assert_close(o["chi2"], V * o["M2"])
    torch.testing.assert_close(o["C"], o["G"].sum(dim=1))
    torch.testing.assert_close(o["E"], 0.5 * (o["G"][:, 1, 0] + o["G"][:, 0, 1]))
    torch.testing.assert_close(o["action_density"], S(phi) / V)
    torch.testing.assert_close(o["M4"], o["M2"] ** 2)
    assert set(o) >= {"M", "absM", "M2", "M4", "chi2", "E", "action_density", "C", "G"}
