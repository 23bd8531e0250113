"""The version of metazoo (a leaf: modules that record it must not import the package root)."""
__version__ = "0.1.0"
