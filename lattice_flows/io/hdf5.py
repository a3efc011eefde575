"""Kept for mcmc/*_run.py until the driver merge: the sample file modules are
io/sample_format.py, io/sample_writer.py, io/sample_reader.py and io/sample_verify.py."""

from lattice_flows.io.sample_reader import SampleFile  # noqa: F401  (api.py, tests/unit/test_production.py of branch i14c)
from lattice_flows.io.sample_writer import SampleWriter  # noqa: F401  (mcmc/*_run.py, runtime/production.py)
