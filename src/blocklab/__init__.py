"""blocklab: verified, measured and demonstrated building blocks of modern transformers."""

__version__ = "0.1.0"
