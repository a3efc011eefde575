"""Lattice field theory: the phi^4 action and its parametrizations (docs/conventions.md)."""

from lattice_flows.theory.phi4 import Phi4Action, hopping_to_standard, standard_to_hopping

__all__ = ["Phi4Action", "hopping_to_standard", "standard_to_hopping"]
