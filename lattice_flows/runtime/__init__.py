"""The run layer: what every run (training, HMC, flow production) needs around its algorithm.

* :mod:`~lattice_flows.runtime.seeds`: independent seeds per stream, torch generators;
* :mod:`~lattice_flows.runtime.resume`: when a run folder may be resumed with a config;
* :mod:`~lattice_flows.runtime.ranks`: per-rank file names and the merged view of MPI runs;
* :mod:`~lattice_flows.runtime.rows`: rows collected until a chunk is committed;
* :mod:`~lattice_flows.runtime.production`: the one production driver (lock, resume, chunked
  commit + checkpoint, graceful stop) under which HMC and flow sampling plug in a ``Producer``.

It sits under ``training`` and ``mcmc`` (both call it) and above ``io`` and ``flows``; it
imports neither training nor mcmc (the layer order is checked by
``tests/unit/test_import_layers.py``). Named ``runtime`` because ``.gitignore`` ignores every
``runs/`` folder (the run folders of the configs). Conventions: docs/conventions.md.
"""
