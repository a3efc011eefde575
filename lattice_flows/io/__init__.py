"""Files: the HDF5 sample layout (sample_format; writer sample_writer, reader sample_reader,
verifier sample_verify), atomic writes (atomic), checkpoints, the training log, run folders."""
