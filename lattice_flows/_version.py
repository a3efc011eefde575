"""The package version (written into every run record and flow file)."""

__version__ = "0.1.0"
