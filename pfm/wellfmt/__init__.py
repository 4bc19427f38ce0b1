"""The Well's dataset layout in pfm: its definition and reader, and the data kit (``pfm data check|stats|convert``).

- :mod:`pfm.wellfmt.layout`: names, :class:`WellFile` (one file: its checks and reads), the kinds of finding;
- :mod:`pfm.wellfmt.check`: checks of a dataset folder (splits, files that agree, ``stats.yaml``, values);
- :mod:`pfm.wellfmt.stats`: ``stats.yaml`` from the train split, streamed;
- :mod:`pfm.wellfmt.convert`: plain ``.npy``/``.npz`` arrays + a YAML spec -> a dataset;
- :mod:`pfm.wellfmt.commands`: the ``pfm data`` subcommands.

It imports numpy, h5py and yaml only (no torch, no Lightning), so ``pfm data`` starts fast; the training reader
(:mod:`pfm.data.well`) builds on :class:`WellFile`. See docs/own_data.md.

Public names: those of :mod:`~pfm.wellfmt.layout` (``FIELD_GROUPS``, ``SPLITS``, ``PROBLEM_KINDS``,
``WARNING_KINDS``, ``BC_TYPES``, ``Finding``, ``FieldInfo``, ``WellFile``, ``channel_names``, ``split_files``) and
of :mod:`~pfm.wellfmt.check` (``check_file``, ``check_stats``, ``check_dataset``).
"""

from pfm.wellfmt import check, layout
from pfm.wellfmt.check import *  # noqa: F403 - the package's names are its modules' public names
from pfm.wellfmt.layout import *  # noqa: F403

__all__ = [*layout.__all__, *check.__all__]
