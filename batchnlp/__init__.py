"""batchnlp: offline batch NLP annotation of corpora with Hugging Face models."""

__version__ = "0.1.0"
