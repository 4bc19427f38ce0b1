"""The old home of pfm's safe unpickling, kept for user code: everything lives in :mod:`pfm.unpickle`."""

from pfm.unpickle import *  # noqa: F403 - the re-export is the whole point; pfm.unpickle.__all__ names it
from pfm.unpickle import __all__  # noqa: F401 - one list of the public names, kept in pfm.unpickle
