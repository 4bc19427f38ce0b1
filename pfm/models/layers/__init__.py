"""Reusable layers of the models.

Modules: ``attention`` (attention backends: sdpa, math, xformers), ``p3d`` (blocks of the P3D architecture
used by Tadpole), ``vit`` (pre-norm transformer block, fused-q/k/v attention, axial RoPE; used by GPhyT), ``tito_blocks``
(adaLN, pair-biased gated attention, SwiGLU blocks of TITO/PLaTITO).
"""
