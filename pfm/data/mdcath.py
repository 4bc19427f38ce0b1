"""mdCATH: C-alpha (x_t, x_{t+lag}) pairs from its HDF5 files, read lazily, one frame at a time.

Layout (``mdcath-only-protein-v1.0``, one file ``data/mdcath_dataset_<domain>.h5`` per CATH domain): the root
group ``<domain>`` holds per-atom datasets ``resname``, ``resid``, ``element``, ``z``, ``chain``, the PDB text
of the protein atoms ``pdbProteinAtoms`` (plus ``pdb``, ``psf``) and attributes ``numResidues``,
``numProteinAtoms``, ``numChains``; one group per temperature (``"320"``, ``"348"``, ``"379"``, ``"413"``,
``"450"`` K) holds replica groups ``"0"``..``"4"`` with ``coords`` ``(frames, atoms, 3)`` in Angstrom at 1 ns
per frame (attribute ``numFrames`` on the replica group). C-alpha atoms are found by atom name in
``pdbProteinAtoms``; only the two frames of a pair are read (h5py hyperslabs), so no domain is ever loaded
whole. Coordinates are converted to nm and centred over the residues.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from datagen.md import centre, random_rotations
from datagen.seeding import generator, validation_seed
from pfm.data.layout import process_rank
from pfm.data.stream_state import TrainedBatchStream
from pfm.embeddings import EmbeddingTable, residue_ids

__all__ = ["MDCATH_TEMPERATURES", "MdCathDataModule", "MdCathDomain", "find_domains"]

MDCATH_TEMPERATURES = (320, 348, 379, 413, 450)
_THREE_TO_ONE = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G", "HIS": "H",
    "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S", "THR": "T", "TRP": "W",
    "TYR": "Y", "VAL": "V",
    # protonation and force-field variants (CHARMM / AMBER names)
    "HSD": "H", "HSE": "H", "HSP": "H", "HID": "H", "HIE": "H", "HIP": "H", "CYX": "C", "CYM": "C", "ASH": "D",
    "GLH": "E", "LYN": "K", "MSE": "M",
}  # fmt: skip


def find_domains(path: str | Path) -> dict[str, Path]:
    """``{domain: file}`` for ``<path>/data/mdcath_dataset_*.h5`` (or files directly in ``path``)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.path={root} is not a folder; expected the mdCATH folder holding data/mdcath_dataset_*.h5."
        )
    files = sorted((root / "data").glob("mdcath_dataset_*.h5")) or sorted(root.glob("mdcath_dataset_*.h5"))
    if not files:
        raise FileNotFoundError(
            f"No mdcath_dataset_*.h5 under {root}/data or {root}; point data.path at the mdCATH folder."
        )
    return {f.name[len("mdcath_dataset_") : -len(".h5")]: f for f in files}


@dataclass
class _Replica:
    temperature: int
    replica: str
    num_frames: int


class MdCathDomain:
    """One mdCATH file: C-alpha indices, sequence and replica lengths at open; frames read on demand."""

    def __init__(self, path: str | Path, temperatures: Sequence[int] = MDCATH_TEMPERATURES) -> None:
        self.path = Path(path)
        self._file: Any = None
        try:
            f = h5py.File(self.path, "r")
        except OSError as err:  # h5py's message names no file
            raise ValueError(
                f"{self.path} cannot be opened as HDF5 ({err}): a truncated or interrupted download? Fix: "
                "download the domain again (mdCATH's files are mdcath_dataset_<domain>.h5), or remove it."
            ) from err
        with f:
            names = list(f.keys())
            if len(names) != 1:
                raise ValueError(f"{self.path}: expected one domain group at the root, found {names}.")
            self.name = names[0]
            group = f[self.name]
            if "pdbProteinAtoms" not in group:
                raise ValueError(
                    f"{self.path}: no pdbProteinAtoms in group {self.name!r} (has {sorted(group)}); expected "
                    "an mdCATH file (layout mdcath-only-protein-v1.0)."
                )
            pdb = group["pdbProteinAtoms"][()]
            pdb = pdb.decode() if isinstance(pdb, bytes) else str(pdb)
            self.ca_index, residues = _ca_atoms(pdb, self.path)
            expected = group.attrs.get("numResidues")
            if expected is not None and int(expected) != len(self.ca_index):
                raise ValueError(
                    f"{self.path}: {len(self.ca_index)} C-alpha atoms in pdbProteinAtoms but numResidues="
                    f"{int(expected)}; the file is inconsistent."
                )
            self.sequence = "".join(_one_letter(r, self.path) for r in residues)
            self.replicas: list[_Replica] = []
            for t in temperatures:
                if str(t) not in group:
                    continue
                for rep, rgroup in group[str(t)].items():
                    frames = int(rgroup.attrs.get("numFrames", rgroup["coords"].shape[0]))
                    self.replicas.append(_Replica(int(t), rep, frames))
        if not self.replicas:
            raise ValueError(
                f"{self.path}: no replicas at temperatures {list(temperatures)}; mdCATH has "
                f"{list(MDCATH_TEMPERATURES)} K. Check data.temperatures."
            )

    @property
    def num_residues(self) -> int:
        """Number of residues (C-alpha atoms)."""
        return len(self.ca_index)

    def frames(self, replica: _Replica, indices: Sequence[int]) -> np.ndarray:
        """C-alpha coordinates ``(len(indices), L, 3)`` in nm of the given frames (not centred)."""
        if self._file is None:  # opened on first read, in the process (worker) that reads
            self._file = h5py.File(self.path, "r")
        coords = self._file[self.name][str(replica.temperature)][replica.replica]["coords"]
        out = np.stack([coords[int(i)][self.ca_index] for i in indices])
        return out.astype(np.float32) / 10.0  # Angstrom -> nm

    def close(self) -> None:
        """Close the file handle, if open."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _ca_atoms(pdb: str, path: Path) -> tuple[np.ndarray, list[str]]:
    index, residues, atom = [], [], 0
    for line in pdb.splitlines():
        if not line.startswith(("ATOM", "HETATM")):
            continue
        if line[12:16].strip() == "CA":
            index.append(atom)
            residues.append(line[17:21].strip())
        atom += 1
    if not index:
        raise ValueError(f"{path}: no CA atoms in pdbProteinAtoms; expected PDB ATOM records of a protein.")
    return np.asarray(index), residues


def _one_letter(resname: str, path: Path) -> str:
    if resname not in _THREE_TO_ONE:
        raise ValueError(
            f"{path}: residue name {resname!r} is not a known amino acid ({sorted(_THREE_TO_ONE)[:5]}...)."
        )
    return _THREE_TO_ONE[resname]


class MdCathDataModule(TrainedBatchStream, L.LightningDataModule):
    """Lagged C-alpha pairs from mdCATH, with the batch format of :class:`pfm.data.chains.ChainDataModule`.

    ``domains``: names to use (default: every file), ``val_domains``: held out for validation (default: none;
    validation then draws other pairs of the training domains). ``lags`` (ns) or ``lag_range`` [low, high] ns
    (default [1, 10]).
    ``embeddings``: null (TITO: ``residue_ids``) or a table (``pfm embed`` safetensors keyed by sequence, or
    the official ``.pt`` keyed by domain). Samples come from ``(seed, rank, step)``: resumable exactly.
    """

    def __init__(
        self,
        path: str,
        *,
        embeddings: str | None = None,
        domains: Sequence[str] | None = None,
        val_domains: Sequence[str] = (),
        temperatures: Sequence[int] = MDCATH_TEMPERATURES,
        lags: Sequence[int] | None = None,
        lag_range: Sequence[int] | None = None,
        max_residues: int | None = None,
        batch_size: int = 8,
        num_val_batches: int = 2,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if lags is None and lag_range is None:
            lag_range = (1, 10)
        if lags is not None and lag_range is not None:
            raise ValueError(
                f"data.lags={lags}, data.lag_range={lag_range}; give exactly one (ns), e.g. data.lag_range=[1,10]."
            )
        self.lags = [int(v) for v in lags] if lags is not None else None
        self.lag_range = tuple(int(v) for v in lag_range) if lag_range is not None else None
        if (self.lags and min(self.lags) < 1) or (
            self.lag_range and not 1 <= self.lag_range[0] <= self.lag_range[1]
        ):
            raise ValueError(f"data.lags={lags}, data.lag_range={lag_range}; lags are integers >= 1 ns.")
        available = find_domains(path)
        wanted = list(domains) if domains is not None else [d for d in available if d not in set(val_domains)]
        missing = sorted(set(wanted) - set(available)) + sorted(set(val_domains) - set(available))
        if missing:
            raise ValueError(
                f"mdCATH domains {missing[:10]} have no file under {path} (found {len(available)}: "
                f"{sorted(available)[:5]}...); fix data.domains / data.val_domains."
            )
        self.temperatures = [int(t) for t in temperatures]
        unknown = sorted(set(self.temperatures) - set(MDCATH_TEMPERATURES))
        if unknown:
            raise ValueError(
                f"data.temperatures has {unknown}; mdCATH simulates {list(MDCATH_TEMPERATURES)} K."
            )
        self.train_domains = [MdCathDomain(available[d], self.temperatures) for d in wanted]
        self.val_domains = [MdCathDomain(available[d], self.temperatures) for d in val_domains]
        if max_residues is not None:
            self.train_domains = [d for d in self.train_domains if d.num_residues <= max_residues]
            if not self.train_domains:
                raise ValueError(f"No training domain has <= data.max_residues={max_residues} residues.")
        self.embeddings = embeddings
        self.table = None
        if embeddings is not None:
            self.table = EmbeddingTable(embeddings)
            for d in self.train_domains + self.val_domains:  # every lookup fails now, not mid-run
                self.table.for_sequence(d.sequence, name=d.name)
        self.batch_size = batch_size
        self.num_val_batches = num_val_batches
        self.augment = augment
        self.seed = seed
        self.step = 0  # batches made; the step after the last trained batch is kept by TrainedBatchStream
        self.generation_seconds = 0.0

    @property
    def spec(self) -> dict[str, int]:
        """What the model takes from the data: the pLM embedding width (0: TITO, amino-acid identity)."""
        return {"plm_dim": self.table.dim if self.table is not None else 0}

    def _rank(self) -> int:
        return process_rank(self.trainer)[0]

    def sample(
        self, domains: list[MdCathDomain], batch: int, g: torch.Generator, augment: bool
    ) -> dict[str, torch.Tensor]:
        """``batch`` pairs: a random domain, replica, lag and start frame each; padded, centred, nm."""
        pairs, lags, temps, names = [], [], [], []
        for _ in range(batch):
            domain = domains[int(torch.randint(len(domains), (1,), generator=g))]
            replica = domain.replicas[int(torch.randint(len(domain.replicas), (1,), generator=g))]
            if self.lags is not None:
                lag = self.lags[int(torch.randint(len(self.lags), (1,), generator=g))]
            else:
                lag = int(torch.randint(self.lag_range[0], self.lag_range[1] + 1, (1,), generator=g))
            lag = min(lag, replica.num_frames - 1)  # a short replica caps the lag rather than failing
            start = int(torch.randint(replica.num_frames - lag, (1,), generator=g))
            pairs.append(torch.from_numpy(domain.frames(replica, [start, start + lag])))
            lags.append(float(lag))
            temps.append(float(replica.temperature))
            names.append(domain)
        length = max(p.shape[1] for p in pairs)
        x = torch.zeros(batch, 2, length, 3)
        mask = torch.zeros(batch, length, dtype=torch.bool)
        ids = torch.zeros(batch, length, dtype=torch.long)
        for i, (p, d) in enumerate(zip(pairs, names, strict=True)):
            x[i, :, : p.shape[1]] = p
            mask[i, : p.shape[1]] = True
            ids[i, : p.shape[1]] = residue_ids(d.sequence)
        x_t, x_next = centre(x[:, 0], mask), centre(x[:, 1], mask)
        if augment:
            rot = random_rotations(batch, g)
            x_t, x_next = x_t @ rot.transpose(1, 2), x_next @ rot.transpose(1, 2)
        out = {
            "x_t": x_t,
            "x_next": x_next,
            "mask": mask,
            "lag": torch.tensor(lags),
            "temperature": torch.tensor(temps),
            "residue_ids": ids,
        }
        if self.table is not None:
            emb = torch.zeros(batch, length, self.table.dim)
            for i, d in enumerate(names):
                emb[i, : d.num_residues] = self.table.for_sequence(d.sequence, name=d.name)
            out["sequence_emb"] = emb
        return out

    def _capture_position(self) -> int:
        return self.step

    def _restore_position(self, position: int) -> None:
        self.step = position

    def _produce(self) -> dict[str, torch.Tensor]:
        """This process's next batch; its random stream is derived from (seed, rank, step)."""
        start = time.perf_counter()
        g = generator(self.seed, self._rank(), self.step, "mdcath")
        batch = self.sample(self.train_domains, self.batch_size, g, self.augment)
        self.step += 1
        self.generation_seconds = time.perf_counter() - start
        return batch

    def val_dataloader(self) -> DataLoader:
        """Fixed validation batches: held-out domains if given, else other pairs of the training domains."""
        domains = self.val_domains or self.train_domains
        batches = [
            self.sample(
                domains,
                self.batch_size,
                generator(validation_seed(self.seed), self._rank(), i, "mdcath-val"),
                False,
            )
            for i in range(self.num_val_batches)
        ]
        return DataLoader(batches, batch_size=None, num_workers=0)

    def state_dict(self) -> dict[str, Any]:
        """The number of batches trained (batches made ahead do not count): the stream continues from there."""
        return {"step": self.trained_position()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the stream where the checkpoint left it."""
        self._forget_positions()
        self.step = int(state_dict["step"])
