"""Kept for mcmc/*_run.py until the driver merge: the sample file modules are
io/sample_format.py, io/sample_writer.py, io/sample_reader.py and io/sample_verify.py."""

from lattice_flows.io.sample_writer import SampleWriter  # noqa: F401  (mcmc/hmc_run.py, mcmc/flow_run.py)
