"""Tadpole dynamics fine-tuning head: identity at initialisation, what trains, LoRA loading and merging."""

from __future__ import annotations

import copy

import pytest
import torch

from pfm.heads.tadpole_dynamics import (
    LoRAConv3d,
    LoRALinear,
    TadpoleDynamics,
    load_base_state_dict,
    merged_state_dict,
)
from pfm.models.tadpole import TadpoleAutoencoder

TOL = {"rtol": 1e-4, "atol": 1e-4}
NEW_PARAMETERS = ("lora_A", "lora_B", "skip_scales", "latent_transformer.")


def _autoencoder(**kwargs) -> TadpoleAutoencoder:
    """A 16^3-crop S autoencoder with perturbed weights (so its output depends on its input)."""
    torch.manual_seed(0)
    model = TadpoleAutoencoder("S", crop_size=16, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _is_new(name: str) -> bool:
    """Whether a parameter belongs to the head rather than to the pretrained autoencoder."""
    return any(part in name for part in NEW_PARAMETERS)


def test_equals_autoencoder_at_initialisation() -> None:
    autoencoder = _autoencoder()
    x = torch.randn(1, 2, 32, 16, 16)  # two channels, two crops along x
    with torch.no_grad():
        expected = autoencoder(x)
        dynamics = TadpoleDynamics(autoencoder, num_channels=2).eval()
        torch.testing.assert_close(dynamics(x), expected, **TOL)


def test_only_new_parameters_train_when_frozen() -> None:
    dynamics = TadpoleDynamics(_autoencoder(), num_channels=2, lora_rank=4)
    x = torch.randn(1, 2, 16, 16, 16)
    dynamics(x).square().mean().backward()
    params = dict(dynamics.named_parameters())
    trainable = {name for name, p in params.items() if p.requires_grad}
    with_grad = {name for name, p in params.items() if p.grad is not None}
    assert trainable == {name for name in params if _is_new(name)}
    assert with_grad == trainable
    assert dynamics.skip_scales.grad.abs().sum() > 0
    # Every Linear and Conv3d of the autoencoder has LoRA, except the unused adaLN Linear.
    lora = [m for m in dynamics.autoencoder.modules() if isinstance(m, (LoRALinear, LoRAConv3d))]
    assert len(lora) == len(dynamics.lora_layers) == 72


def test_unfrozen_base_trains_too() -> None:
    dynamics = TadpoleDynamics(_autoencoder(), num_channels=1, lora_rank=2, freeze_base=False)
    frozen = {name for name, p in dynamics.named_parameters() if not p.requires_grad}
    assert frozen and all("adaLN_modulation" in name for name in frozen)


def test_trainable_parameter_count_matches_paper() -> None:
    with torch.device("meta"):
        dynamics = TadpoleDynamics(TadpoleAutoencoder("S"), num_channels=3)
    total, trainable = dynamics.parameter_count(), dynamics.trainable_parameter_count()
    print(
        f"Tadpole-S dynamics, 3 channels, LoRA rank 32: {trainable / 1e6:.2f}M trainable "
        f"of {total / 1e6:.2f}M"
    )
    # Paper: about 3.0M trainable of 11.8M.
    assert abs(trainable / 1e6 - 3.0) < 0.1 and abs(total / 1e6 - 11.8) < 0.1


def test_official_weights_load_into_lora_model_and_merge_back() -> None:
    autoencoder = _autoencoder()
    official = copy.deepcopy(autoencoder.encoder.state_dict())
    dynamics = TadpoleDynamics(autoencoder, num_channels=1, lora_rank=4)
    load_base_state_dict(dynamics.autoencoder.encoder, official)
    with pytest.raises(RuntimeError, match="missing"):
        load_base_state_dict(dynamics.autoencoder.encoder, {k: v for k, v in list(official.items())[1:]})
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        before = dynamics.autoencoder(x)
    # Train-like change of the LoRA factors, then fold them into plain weights with the official names.
    with torch.no_grad():
        for name, p in dynamics.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 1e-3)
    merged = {part: merged_state_dict(getattr(dynamics.autoencoder, part)) for part in ("encoder", "decoder")}
    assert list(merged["encoder"]) == list(official)
    plain = TadpoleAutoencoder("S", crop_size=16).eval()
    plain.encoder.load_state_dict(merged["encoder"], strict=True)
    plain.decoder.load_state_dict(merged["decoder"], strict=True)
    with torch.no_grad():
        lora_out = dynamics.autoencoder(x)
        assert not torch.allclose(lora_out, before, **TOL)
        torch.testing.assert_close(plain(x), lora_out, **TOL)


def test_chunked_equals_unchunked_and_shape_errors() -> None:
    x = torch.randn(1, 1, 32, 16, 16)
    whole = TadpoleDynamics(_autoencoder(), num_channels=1, lora_rank=2, latent_depth=1).eval()
    chunked = TadpoleDynamics(_autoencoder(chunk_size=1), num_channels=1, lora_rank=2, latent_depth=1).eval()
    chunked.load_state_dict(whole.state_dict())
    with torch.no_grad():
        whole.skip_scales.fill_(0.5)
        chunked.skip_scales.fill_(0.5)
        torch.testing.assert_close(chunked(x), whole(x), **TOL)
    with pytest.raises(ValueError, match=r"\(batch, 1, x, y, z\)"):
        whole(torch.randn(1, 2, 16, 16, 16))
