"""lattice_flows: scalar phi^4 lattice field theory sampled with normalizing flows and HMC.

From Python (README, "Python API")::

    import lattice_flows as lf
    cfg = lf.load_config("configs/quickstart.yaml", {"output.dir": "runs/nb"})
    lf.train(cfg); lf.sample(cfg); print(lf.analyze("runs/nb/samples.h5"))

The API names (:mod:`lattice_flows.api`) load on first use, so ``import lattice_flows`` itself
imports no torch. Physics conventions: ``docs/conventions.md``.
"""

from lattice_flows._version import __version__

_API = ("Config", "ConfigError", "SampleFile", "analyze", "hmc", "load_config", "load_flow",
        "open_samples", "sample", "train")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """``lattice_flows.<name>`` for the API names (PEP 562: imported on first access)."""
    if name in _API:
        from lattice_flows import api

        return getattr(api, name)
    raise AttributeError(f"module 'lattice_flows' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
