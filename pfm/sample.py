"""`pfm sample`: roll out TITO/PLaTITO trajectories from a start structure (official or pfm checkpoints).

    pfm sample CKPT --pdb START.pdb --embeddings TABLE --lag 1 --steps 1000 --trajectories 100 --out DIR

CKPT is an official Lightning checkpoint (`pantoniadis/platito` *.ckpt, read without running pickled code),
a pfm training checkpoint (the task holds the network as `model`), or a `pfm export` folder. The start
structure's C-alpha atoms (first model, Angstrom) give the coordinates (nm) and the sequence; PLaTITO reads the
sequence's per-residue embeddings from TABLE (`pfm embed` tables or the official `.pt` dict), TITO the
amino-acid identity. Writes DIR/trajectories.pt ({"coords": (trajectories, steps + 1, L, 3) nm, ...}) and
DIR/trajectory_<i>.pdb (multi-model C-alpha PDB) for the first `--pdb-trajectories` trajectories.

Public names: `run` (the command; its arguments are in `pfm.commands`), `read_ca_pdb`, `write_ca_pdb` (the
checkpoint is read by `pfm.build.load_tito`).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pfm.build import load_tito
from pfm.embeddings import EmbeddingTable, residue_ids
from pfm.io import atomic_path

__all__ = ["OFFICIAL_RESIDUE_IDS", "read_ca_pdb", "run", "write_ca_pdb"]

THREE_TO_ONE = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
    "HIS": "H", "HSD": "H", "HSE": "H", "HSP": "H", "HID": "H", "HIE": "H", "ILE": "I", "LEU": "L",
    "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S", "THR": "T", "TRP": "W", "TYR": "Y",
    "VAL": "V", "SEC": "U", "PYL": "O", "UNK": "X",
}  # fmt: skip
ONE_TO_THREE = {v: k for k, v in reversed(THREE_TO_ONE.items())}
# The official PLaTITO vocabulary (TITO's residue embedding rows); pfm-trained TITO uses pfm.embeddings'.
OFFICIAL_RESIDUE_IDS = {a: i for i, a in enumerate("ACDEFGHIKLMNOPQRSTUVWYX")}


def read_ca_pdb(path: str | Path) -> tuple[torch.Tensor, str]:
    """C-alpha coordinates (L, 3) in nm and the one-letter sequence of the first model of a PDB file."""
    coords, seq, seen = [], [], set()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"start structure {path} does not exist; pass --pdb with a PDB file.")
    for line in path.read_text().splitlines():
        if line.startswith("ENDMDL"):
            break
        if not line.startswith(("ATOM", "HETATM")) or line[12:16].strip() != "CA":
            continue
        res = (line[21], line[22:27])  # chain, residue number + insertion code
        if res in seen or line[16] not in " A":  # one CA per residue; first alternate location only
            continue
        seen.add(res)
        name = line[17:20].strip()
        if name not in THREE_TO_ONE:
            raise ValueError(f"{path}: residue {name} {res[1].strip()} is not an amino acid pfm knows.")
        seq.append(THREE_TO_ONE[name])
        coords.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
    if not coords:
        raise ValueError(f"{path} has no C-alpha (ATOM ... CA) records; expected a protein PDB file.")
    return torch.tensor(coords, dtype=torch.float32) / 10.0, "".join(seq)


def write_ca_pdb(path: str | Path, frames: torch.Tensor, sequence: str) -> Path:
    """Write frames (T, L, 3) nm as a multi-model C-alpha PDB (Angstrom), atomically."""
    lines = []
    for t, frame in enumerate(frames.detach().cpu().double() * 10.0):
        lines.append(f"MODEL     {t + 1:4d}")
        for i, (xyz, aa) in enumerate(zip(frame.tolist(), sequence, strict=True)):
            x, y, z = xyz
            lines.append(
                f"ATOM  {i + 1:5d}  CA  {ONE_TO_THREE.get(aa, 'UNK')} A{i + 1:4d}    "
                f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           C"
            )
        lines.append("ENDMDL")
    lines.append("END")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def _sequence_inputs(model: Any, sequence: str, args: argparse.Namespace, official: bool) -> dict[str, Any]:
    if model.is_tito:
        if official:
            return {"residue_ids": torch.tensor([OFFICIAL_RESIDUE_IDS.get(a, 22) for a in sequence])}

        return {"residue_ids": residue_ids(sequence)}
    if args.embeddings is None:
        raise ValueError(
            f"this PLaTITO reads {model.plm_dim}-wide pLM embeddings: pass --embeddings TABLE (`pfm embed` table or "
            "the official .pt dict)."
        )

    table = EmbeddingTable(args.embeddings)
    name = args.name or (table.keys[0] if len(table) == 1 else None)
    emb = table.for_sequence(sequence, name)
    if emb.shape[-1] != model.plm_dim:
        raise ValueError(
            f"embeddings in {args.embeddings} are {emb.shape[-1]} wide; the model reads {model.plm_dim} "
            "(PLaTITO-3M: ESM C 300M layer 20, 960; 19M/36M: ESM C 6B, 2560). Use the matching table."
        )
    return {"sequence_emb": emb.float()}


def run(args: argparse.Namespace) -> int:
    """Run `pfm sample` with the arguments :mod:`pfm.commands` parsed."""
    if args.steps < 1 or args.trajectories < 1 or args.flow_steps < 1 or args.lag <= 0:
        raise ValueError(
            f"--steps {args.steps}, --trajectories {args.trajectories}, --flow-steps {args.flow_steps} must be "
            f">= 1 and --lag {args.lag} > 0 (ns)."
        )

    device = torch.device(args.device)
    model, official = load_tito(args.checkpoint)
    model = model.to(device)
    x0, sequence = read_ca_pdb(args.pdb)
    inputs = _sequence_inputs(model, sequence, args, official)
    b, n = args.trajectories, len(sequence)
    kw = {k: v.to(device)[None].expand(b, *v.shape) for k, v in inputs.items()}
    mask = torch.ones(b, n, dtype=torch.bool, device=device)
    lag = torch.full((b,), float(args.lag), device=device)
    temp = torch.full((b,), float(args.temperature), device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = x0.to(device)[None].expand(b, n, 3)
    with torch.no_grad():
        coords = model.rollout(
            x,
            mask,
            lag,
            temp,
            num_transitions=args.steps,
            steps=args.flow_steps,
            generator=gen,
            progress=partial(tqdm, desc="transitions", unit="step"),
            **kw,
        ).cpu()  # (trajectories, steps + 1, L, 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "coords": coords,
        "sequence": sequence,
        "lag_ns": float(args.lag),
        "temperature_K": float(args.temperature),
        "flow_steps": args.flow_steps,
        "seed": args.seed,
        "checkpoint": str(args.checkpoint),
        "units": "nm",
    }
    with atomic_path(out / "trajectories.pt") as tmp:
        torch.save(record, tmp)
    print(out / "trajectories.pt", tuple(coords.shape))
    for i in range(min(args.pdb_trajectories, b)):
        print(write_ca_pdb(out / f"trajectory_{i}.pdb", coords[i], sequence))
    return 0
