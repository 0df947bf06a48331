"""embedlab: tracked, reproducible training and evaluation of image-embedding models."""

__version__ = "0.1.0"
