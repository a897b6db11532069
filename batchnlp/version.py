"""The version of batchnlp (its own module: the package root loads the API on first use)."""

__version__ = "0.3.0"
