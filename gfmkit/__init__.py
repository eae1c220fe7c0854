"""gfmkit: train, tune, test and use multi-task atomistic graph foundation models, from a notebook."""

from gfmkit._version import __version__

__all__ = ["__version__"]
