"""How exact is a trained continuous equivariant layer (lattice_flows/flows/cnf.py)?

For the first CNF layer of a trained ``flow.pt``, at the layer's input for a few fresh flow
samples (float64): the integrated divergence (the log-det the flow reports) minus the autograd
log|det J| of the same discrete RK4 map, and max |inverse(forward(x)) - x|, at n/2, n, 2n and 4n
RK4 steps (n = the trained ``cnf_steps``). Both errors should fall like h^4 or faster.

    python benchmarks/cnf_exactness.py runs/L16_cnf/flow.pt --lattice 16 16 --configs 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_hardware.py

from _hardware import hardware_line  # noqa: E402
from lattice_flows.flows.cnf import ContinuousEquivariantLayer
from lattice_flows.flows.flowfile import load_flow  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("flow", help="path to a flow.pt with cnf_layers > 0")
    ap.add_argument("--lattice", type=int, nargs="+", default=[16, 16])
    ap.add_argument("--configs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"# hardware: {hardware_line()}")
    shape = tuple(args.lattice)
    flow = load_flow(args.flow, shape, "cpu", torch.float64)
    idx = [i for i, layer in enumerate(flow.layers) if isinstance(layer, ContinuousEquivariantLayer)]
    if not idx:
        raise SystemExit(f"{args.flow}: no continuous equivariant layer (flow.cnf_layers = 0)")
    with torch.no_grad():
        x = flow.prior.sample(args.configs, generator=torch.Generator().manual_seed(args.seed),
                              dtype=torch.float64, lattice_shape=shape)
        for layer in flow.layers[: idx[0]]:
            x, _ = layer(x)
    cnf = flow.layers[idx[0]]
    print(f"omega {cnf.omega.detach().numpy().round(3)}; Lipschitz bound "
          f"{cnf.lipschitz_bound():.3f} of {cnf.lipschitz_max}")
    trained = cnf.n_steps
    for n in sorted({max(1, trained // 2), trained, 2 * trained, 4 * trained}):
        cnf.n_steps = n
        errs, rts = [], []
        for i in range(args.configs):
            xi = x[i : i + 1]
            jac = torch.autograd.functional.jacobian(
                lambda v: cnf(v.reshape(1, *shape))[0].reshape(-1), xi.reshape(-1), vectorize=True
            )
            exact = float(torch.linalg.slogdet(jac)[1])
            with torch.no_grad():
                y, ld = cnf(xi)
                xb, _ = cnf.inverse(y)
            errs.append(float(ld[0]) - exact)
            rts.append(float((xb - xi).abs().max()))
        print(f"steps {n:3d}: log-det {float(ld[0]):.4f}; integrated - autograd "
              f"{', '.join('%.2e' % e for e in errs)}; max|inverse(forward(x)) - x| "
              f"{', '.join('%.2e' % r for r in rts)}", flush=True)
    cnf.n_steps = trained


if __name__ == "__main__":
    main()
