"""The one place the package version lives."""

__all__ = ["__version__"]

__version__ = "0.1.0"
