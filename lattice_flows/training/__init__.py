"""Flow training: gradient estimators (reverse KL, path gradient, forward KL, mixed), data
streaming from HDF5 sample files, and the trainer with checkpoints and metrics."""
