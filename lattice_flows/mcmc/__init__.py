"""Markov chains: HMC (baseline and data source) and the flow independence Metropolis sampler."""
