"""Coarse-grained C-alpha bead chains: procedural native structures, random sequences, energy, Langevin steps.

Units: nm, kJ/mol, K. A chain of ``L`` beads (one per residue) has the potential energy

    U = sum_bonds k_bond/2 (r - 0.38)^2                      harmonic bonds
      + sum_angles k_angle/2 (cos t - cos t0)^2              angle terms around the native angles
      + sum_pairs k_rep/2 (sigma - r)^2 [r < sigma]           excluded volume, soft (|i-j| >= 3)
      - sum_native eps_go exp(-(r - d0)^2 / 2 w_go^2)         Go-like native contacts (d0 < cutoff)
      - sum_other eps_seq h_i h_j exp(-(r - r_hp)^2 / 2w^2)   sequence-dependent (hydrophobic) attraction

with ``h`` the hydrophobicity of each residue type. Wells are Gaussian and the excluded volume is a soft harmonic
wall rather than Lennard-Jones: every term's curvature stays below ~k_bond, so a step of 2e-4 nm^2 mol/kJ is
stable (a 1/r^12 wall met by the Langevin noise at this step size blows chains up). Native structures are built bead by bead from bond
length, angle and dihedral (helix, strand and loop segments drawn at random), so every chain differs; the
sequence is drawn independently, so embeddings differ too. Chains of different length share one padded
batch ``(num_chains, max_residues, 3)`` with a boolean ``mask``.

Dynamics: overdamped Langevin, x <- x - D/kT grad U dt + sqrt(2 D dt) xi, written with the mobility
``mobility_dt = D dt / kT`` folded into one number per step (``step_size``, nm^2 mol/kJ), so that
x <- x - step_size grad U + sqrt(2 kT step_size) xi.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = [
    "AMINO_ACIDS",
    "BOLTZMANN_KJ",
    "HYDROPHOBICITY",
    "ChainSystem",
    "ForceField",
    "end_to_end",
    "energy",
    "forces",
    "langevin_step",
    "make_chains",
    "native_structures",
    "radius_of_gyration",
    "random_sequences",
]

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# Kyte-Doolittle hydropathy rescaled to [0, 1] (a public scale; only its ordering matters here).
_KYTE_DOOLITTLE = {
    "A": 1.8, "C": 2.5, "D": -3.5, "E": -3.5, "F": 2.8, "G": -0.4, "H": -3.2, "I": 4.5, "K": -3.9, "L": 3.8,
    "M": 1.9, "N": -3.5, "P": -1.6, "Q": -3.5, "R": -4.5, "S": -0.8, "T": -0.7, "V": 4.2, "W": -0.9, "Y": -1.3,
}  # fmt: skip
HYDROPHOBICITY = torch.tensor([(_KYTE_DOOLITTLE[a] + 4.5) / 9.0 for a in AMINO_ACIDS])
BOLTZMANN_KJ = 0.0083144626  # kJ / (mol K)
BOND_LENGTH = 0.38  # nm, C-alpha to C-alpha


@dataclass(frozen=True)
class ForceField:
    """Strengths and lengths of the energy terms (kJ/mol, nm); defaults give stable chains at 250-450 K."""

    k_bond: float = 500.0
    k_angle: float = 20.0
    eps_go: float = 4.0
    width_go: float = 0.08
    contact_cutoff: float = 0.8
    k_rep: float = 500.0
    sigma_rep: float = 0.4
    eps_seq: float = 2.0
    r_hydrophobic: float = 0.55
    width_hydrophobic: float = 0.1

    @classmethod
    def from_dict(cls, values: dict | None) -> ForceField:
        """A force field with ``values`` overriding the defaults; unknown names are an error."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown force-field term(s) {unknown}; expected a subset of {sorted(known)}.")
        return cls(**{k: float(v) for k, v in values.items()})


@dataclass
class ChainSystem:
    """The parameters of a batch of chains (all tensors on one device).

    ``mask`` ``(N, L)`` valid residues; ``residue_ids`` ``(N, L)`` long (0..19, 0 where padded);
    ``native`` ``(N, L, 3)`` native coordinates (nm); ``cos_angle0`` ``(N, L-2)`` native angle cosines;
    ``contact`` ``(N, L, L)`` bool native contacts; ``d0`` ``(N, L, L)`` native distances;
    ``temperature`` ``(N,)`` K.
    """

    mask: torch.Tensor
    residue_ids: torch.Tensor
    native: torch.Tensor
    cos_angle0: torch.Tensor
    contact: torch.Tensor
    d0: torch.Tensor
    temperature: torch.Tensor

    def select(self, rows: torch.Tensor) -> ChainSystem:
        """The chains ``rows`` as a new system."""
        return ChainSystem(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def assign(self, rows: torch.Tensor, other: ChainSystem) -> None:
        """Overwrite chains ``rows`` with the chains of ``other`` (same padded length)."""
        for f in fields(self):
            getattr(self, f.name)[rows] = getattr(other, f.name).to(getattr(self, f.name).dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        """All parameters by name (for state dicts)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def random_sequences(lengths: torch.Tensor, max_len: int, g: torch.Generator) -> torch.Tensor:
    """Uniformly random residue ids ``(N, max_len)`` (0 beyond each chain's length)."""
    ids = torch.randint(len(AMINO_ACIDS), (lengths.numel(), max_len), generator=g, device=lengths.device)
    return ids * (torch.arange(max_len, device=lengths.device) < lengths[:, None])


def _place(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, angle, dihedral) -> torch.Tensor:
    """Next bead after a, b, c at BOND_LENGTH from c, angle b-c-d and dihedral a-b-c-d (NeRF), ``(N, 3)``."""
    bc = c - b
    bc = bc / bc.norm(dim=-1, keepdim=True)
    n = torch.linalg.cross(b - a, bc)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    m = torch.linalg.cross(n, bc)
    d2 = torch.stack(
        (-torch.cos(angle), torch.sin(angle) * torch.cos(dihedral), torch.sin(angle) * torch.sin(dihedral)),
        -1,
    )
    return c + BOND_LENGTH * (d2[:, :1] * bc + d2[:, 1:2] * m + d2[:, 2:3] * n)


# (angle, dihedral) in degrees of C-alpha traces: alpha helix, beta strand; loops draw both at random.
_HELIX = (91.0, 50.0)
_STRAND = (120.0, -170.0)


def native_structures(
    lengths: torch.Tensor, max_len: int, g: torch.Generator, num_candidates: int = 8
) -> torch.Tensor:
    """Procedural native C-alpha structures ``(N, max_len, 3)`` (nm, centred), built bead by bead.

    Each candidate is a random succession of helix, strand and loop segments; of ``num_candidates`` per
    chain, the most compact one (smallest radius of gyration) whose non-neighbouring beads do not clash
    (closer than 0.42 nm) is kept, so that natives have tertiary contacts. Padded beads are zero.
    """
    device = lengths.device
    num = lengths.numel()
    x = _draw_chain(num * num_candidates, max_len, g, device).view(num, num_candidates, max_len, 3)
    valid = torch.arange(max_len, device=device)[None] < lengths[:, None]
    x = x * valid[:, None, :, None]
    vk = valid[:, None].expand(num, num_candidates, max_len)
    clash = _clashes(x.flatten(0, 1), vk.flatten(0, 1)).view(num, num_candidates)
    rg = radius_of_gyration(x, vk) + 100.0 * clash  # a clashing candidate is kept only if all clash
    out = x[torch.arange(num, device=device), rg.argmin(1)]
    centre = out.sum(1, keepdim=True) / valid.sum(1, keepdim=True)[..., None]
    return (out - centre) * valid[..., None]


def _draw_chain(num: int, max_len: int, g: torch.Generator, device) -> torch.Tensor:
    x = torch.zeros(num, max_len, 3, device=device)
    if max_len > 1:
        x[:, 1, 0] = BOND_LENGTH
    if max_len > 2:
        a0 = torch.deg2rad(torch.tensor(110.0, device=device))
        x[:, 2, 0] = BOND_LENGTH - BOND_LENGTH * torch.cos(a0)
        x[:, 2, 1] = BOND_LENGTH * torch.sin(a0)
    # per-bead secondary structure: segments of 3-8 beads, 0 helix, 1 strand, 2 loop
    kind = torch.empty(num, max_len, dtype=torch.long, device=device)
    for row in range(num):
        pos = 0
        while pos < max_len:
            span = int(torch.randint(3, 9, (1,), generator=g, device=device))
            kind[row, pos : pos + span] = int(torch.randint(3, (1,), generator=g, device=device))
            pos += span
    helix = torch.tensor(_HELIX, device=device)
    strand = torch.tensor(_STRAND, device=device)
    loop_angle = 85.0 + 50.0 * torch.rand(num, max_len, generator=g, device=device)
    loop_dihedral = -180.0 + 360.0 * torch.rand(num, max_len, generator=g, device=device)
    jitter = 8.0 * torch.randn(num, max_len, 2, generator=g, device=device)
    angle = torch.where(kind == 0, helix[0], torch.where(kind == 1, strand[0], loop_angle)) + jitter[..., 0]
    dihedral = (
        torch.where(kind == 0, helix[1], torch.where(kind == 1, strand[1], loop_dihedral)) + jitter[..., 1]
    )
    angle, dihedral = torch.deg2rad(angle.clamp(80.0, 150.0)), torch.deg2rad(dihedral)
    for i in range(3, max_len):
        x[:, i] = _place(x[:, i - 3], x[:, i - 2], x[:, i - 1], angle[:, i], dihedral[:, i])
    return x


def _clashes(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, x)
    idx = torch.arange(x.shape[1], device=x.device)
    far = (idx[:, None] - idx[None]).abs() >= 3
    pair = far & valid[:, :, None] & valid[:, None, :]
    return ((d < 0.42) & pair).flatten(1).any(1)


def make_chains(
    lengths: torch.Tensor,
    max_len: int,
    temperature: torch.Tensor,
    g: torch.Generator,
    force_field: ForceField,
    residue_ids: torch.Tensor | None = None,
) -> ChainSystem:
    """New chains of the given ``lengths`` ``(N,)``: native structure, sequence (random unless given), contacts."""
    device = lengths.device
    native = native_structures(lengths, max_len, g)
    mask = torch.arange(max_len, device=device)[None] < lengths[:, None]
    if residue_ids is None:
        residue_ids = random_sequences(lengths, max_len, g)
    residue_ids = residue_ids.to(device=device, dtype=torch.long) * mask
    diff = native[:, :, None] - native[:, None]
    d0 = diff.norm(dim=-1)
    idx = torch.arange(max_len, device=device)
    far = (idx[:, None] - idx[None]).abs() >= 3
    pair = far & mask[:, :, None] & mask[:, None, :]
    contact = pair & (d0 < force_field.contact_cutoff)
    return ChainSystem(
        mask=mask,
        residue_ids=residue_ids,
        native=native,
        cos_angle0=_cos_angles(native),
        contact=contact,
        d0=torch.where(contact, d0, torch.ones_like(d0)),
        temperature=temperature.to(device=device, dtype=torch.float32),
    )


def _cos_angles(x: torch.Tensor) -> torch.Tensor:
    u = x[:, :-2] - x[:, 1:-1]
    v = x[:, 2:] - x[:, 1:-1]
    norm = (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(1e-9)
    return (u * v).sum(-1) / norm


def energy(x: torch.Tensor, system: ChainSystem, ff: ForceField) -> torch.Tensor:
    """Potential energy (kJ/mol) of each chain, ``(N,)``, for coordinates ``(N, L, 3)`` in nm."""
    mask = system.mask
    num_len = x.shape[1]
    bond_mask = mask[:, 1:] & mask[:, :-1]
    r = (x[:, 1:] - x[:, :-1]).norm(dim=-1)
    e = (0.5 * ff.k_bond * (r - BOND_LENGTH).square() * bond_mask).sum(1)
    if num_len > 2:
        angle_mask = mask[:, 2:] & bond_mask[:, 1:]
        u = x[:, :-2] - x[:, 1:-1]
        v = x[:, 2:] - x[:, 1:-1]
        norm2 = (u.square().sum(-1) * v.square().sum(-1)).clamp_min(1e-12)
        cos = (u * v).sum(-1) * torch.rsqrt(norm2)
        e = e + (0.5 * ff.k_angle * (cos - system.cos_angle0).square() * angle_mask).sum(1)
    if num_len > 3:
        idx = torch.arange(num_len, device=x.device)
        upper = (idx[None] - idx[:, None]) >= 3
        pair = upper & mask[:, :, None] & mask[:, None, :]
        diff = x[:, :, None] - x[:, None]
        # masked pairs are set to 1 before any power, so that no inf or NaN reaches the gradient
        r2 = torch.where(pair, diff.square().sum(-1), torch.ones((), device=x.device))
        native = system.contact & pair
        rr = r2.sqrt()
        rep = 0.5 * ff.k_rep * (ff.sigma_rep - rr).clamp_min(0).square()
        go = ff.eps_go * torch.exp(-(rr - system.d0).square() / (2 * ff.width_go**2))
        h = HYDROPHOBICITY.to(x.device)[system.residue_ids]
        attract = ff.eps_seq * h[:, :, None] * h[:, None, :]
        attract = attract * torch.exp(-(rr - ff.r_hydrophobic).square() / (2 * ff.width_hydrophobic**2))
        e = (
            e
            + (rep * pair).sum((1, 2))
            - (go * native).sum((1, 2))
            - (attract * (pair & ~native)).sum((1, 2))
        )
    return e


def forces(x: torch.Tensor, system: ChainSystem, ff: ForceField) -> torch.Tensor:
    """-grad U ``(N, L, 3)`` (kJ/mol/nm), written out by hand (autograd per step costs ~5x); zero when padded.

    tests/test_md.py checks it against autograd of :func:`energy`.
    """
    mask = system.mask
    num_len = x.shape[1]
    f = torch.zeros_like(x)
    bond_mask = mask[:, 1:] & mask[:, :-1]
    b = x[:, 1:] - x[:, :-1]
    r = b.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    fb = ff.k_bond * (r - BOND_LENGTH) / r * b * bond_mask[..., None]
    f[:, :-1] += fb
    f[:, 1:] -= fb
    if num_len > 2:
        angle_mask = (mask[:, 2:] & bond_mask[:, 1:])[..., None]
        u = x[:, :-2] - x[:, 1:-1]
        v = x[:, 2:] - x[:, 1:-1]
        uu = u.square().sum(-1, keepdim=True).clamp_min(1e-12)
        vv = v.square().sum(-1, keepdim=True).clamp_min(1e-12)
        inv = torch.rsqrt(uu * vv)
        cos = (u * v).sum(-1, keepdim=True) * inv
        coef = -ff.k_angle * (cos - system.cos_angle0[..., None]) * angle_mask
        fu = coef * (v * inv - cos * u / uu)
        fv = coef * (u * inv - cos * v / vv)
        f[:, :-2] += fu
        f[:, 2:] += fv
        f[:, 1:-1] -= fu + fv
    if num_len > 3:
        idx = torch.arange(num_len, device=x.device)
        pair = ((idx[None] - idx[:, None]).abs() >= 3) & mask[:, :, None] & mask[:, None, :]
        diff = x[:, :, None] - x[:, None]
        r2 = torch.where(pair, diff.square().sum(-1), torch.ones((), device=x.device))
        native = system.contact & pair
        rr = r2.sqrt()
        rep = -ff.k_rep * (ff.sigma_rep - rr).clamp_min(0) / (2.0 * rr)
        # a Gaussian well -A exp(-(r - c)^2 / 2w^2) has d/d(r^2) = A exp(...) (r - c) / (2 r w^2)
        go = ff.eps_go * torch.exp(-(rr - system.d0).square() / (2 * ff.width_go**2))
        go = go * (rr - system.d0) / (2.0 * rr * ff.width_go**2)
        h = HYDROPHOBICITY.to(x.device)[system.residue_ids]
        attract = ff.eps_seq * h[:, :, None] * h[:, None, :]
        attract = attract * torch.exp(-(rr - ff.r_hydrophobic).square() / (2 * ff.width_hydrophobic**2))
        attract = attract * (rr - ff.r_hydrophobic) / (2.0 * rr * ff.width_hydrophobic**2)
        de_dr2 = rep * pair + go * native + attract * (pair & ~native)
        f -= 2.0 * (de_dr2[..., None] * diff).sum(2)
    return f * mask[..., None]


def langevin_step(
    x: torch.Tensor,
    system: ChainSystem,
    ff: ForceField,
    step_size: float,
    g: torch.Generator | None,
    num_steps: int = 1,
    temperature_scale: float = 1.0,
) -> torch.Tensor:
    """``num_steps`` overdamped Langevin steps of ``(N, L, 3)``; ``g=None`` or scale 0 gives gradient descent."""
    kt = BOLTZMANN_KJ * system.temperature[:, None, None] * temperature_scale
    noise_scale = torch.sqrt(2.0 * kt * step_size)
    mask = system.mask[..., None]
    for _ in range(num_steps):
        x = x + step_size * forces(x, system, ff)
        if g is not None and temperature_scale > 0:
            x = x + noise_scale * torch.randn(x.shape, generator=g, device=x.device) * mask
    return x


def radius_of_gyration(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Radius of gyration (nm) over valid beads of ``(..., L, 3)``, shape ``(...)``."""
    m = mask[..., None].to(x.dtype)
    count = m.sum(-2)
    centre = (x * m).sum(-2, keepdim=True) / count[..., None, :]
    return (((x - centre).square() * m).sum((-2, -1)) / count[..., 0]).sqrt()


def end_to_end(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Distance (nm) between the first and the last valid bead of ``(..., L, 3)``, shape ``(...)``."""
    last = mask.long().sum(-1) - 1
    index = last[..., None, None].expand(*x.shape[:-2], 1, 3)
    return (torch.gather(x, -2, index).squeeze(-2) - x[..., 0, :]).norm(dim=-1)
