"""lattice_flows: scalar phi^4 lattice field theory sampled with normalizing flows and HMC.

Physics conventions: ``docs/conventions.md``.
"""

__version__ = "0.1.0"
