"""Files: the HDF5 sample layout (writer/reader), checkpoints, run folders."""
