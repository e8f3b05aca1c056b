"""gdn_tune: the offline tuner. Sweeps kernel configs per GPU target and shape, keeps every trial in a
database, and exports the winners as the static tables `gdn_kernels` loads at run time."""

from gdn_kernels import __version__

__all__ = ["__version__"]
