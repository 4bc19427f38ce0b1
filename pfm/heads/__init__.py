"""pfm.heads."""

from pfm.heads.tadpole_dynamics import TadpoleDynamics

__all__ = ["TadpoleDynamics"]
