"""Physical names of every PDE family's channels, so that models that address fields by name (GPhyT) can mix
families: the same quantity has the same name in every family (``vel_x`` is an x velocity whether it comes from
Navier-Stokes, Kolmogorov flow or Burgers), and different quantities never share a name.

Velocity components follow GPhyT's names (``vel_x``, ``vel_y``, ``vel_z``); vector channels are ordered like
the spatial axes, which is how the pools store them. A family not listed here has one scalar channel named after
the family (``<family>``), so that a new PDE gets a name that cannot collide with another family's quantity;
give it a physical name here when it shares one with other families.

Public names: ``FIELD_NAMES``, ``field_names``.
"""

from __future__ import annotations

from datagen.pdes import get_pde

__all__ = ["FIELD_NAMES", "field_names"]

_VELOCITY = ("vel_x", "vel_y", "vel_z")

#: ``family -> channel names``; vector families list one name per spatial axis (the first ``d`` are used).
FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "navier_stokes_velocity": _VELOCITY,
    "navier_stokes_vorticity": ("vorticity",),
    "kolmogorov_flow_velocity": _VELOCITY,
    "kolmogorov_flow_vorticity": ("vorticity",),
    "burgers": _VELOCITY,
    # the two species of the Gray-Scott reaction (u feeds v)
    "gray_scott": ("species_u", "species_v"),
    # the heat equation's field is a temperature
    "diffusion": ("temperature",),
}


def field_names(pde_name: str, num_spatial_dims: int) -> tuple[str, ...]:
    """The names of the channels of family ``pde_name`` in ``num_spatial_dims`` dimensions, in channel order."""
    pde = get_pde(pde_name)  # raises with the list of known families for an unknown name
    num_channels = pde.num_channels(num_spatial_dims)
    names = FIELD_NAMES.get(pde_name, (pde_name,) if num_channels == 1 else ())
    if pde.is_vector:
        names = names[:num_spatial_dims]
    if len(names) != num_channels:
        raise ValueError(
            f"PDE {pde_name!r} has {num_channels} channels in {num_spatial_dims}D but datagen/fields.py names "
            f"{list(names)}; list one name per channel in FIELD_NAMES[{pde_name!r}]."
        )
    return tuple(names)
