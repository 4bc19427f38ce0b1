"""Tadpole autoencoder: official checkpoint layout, cropping and channel folding, errors, attention backends.

Names and shapes are checked against `tests/assets/tadpole_state_dicts.json`, a copy of the anchors read off
the official model code. Numerical equality with the official code was checked outside CI (the official code
is not a dependency); these tests guard the properties that equality rests on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pfm.models.tadpole import TADPOLE_CONFIGS, TadpoleAutoencoder

ANCHORS = json.loads((Path(__file__).parent / "assets" / "tadpole_state_dicts.json").read_text())
# Published parameter counts (millions, buffers excluded).
PUBLISHED_PARAMS = {"S": 8.8, "B": 38.1, "L": 152.1}
# Same maths, different batch sizes: CPU kernels may round differently, by ~1e-6 relative.
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _perturbed(model: TadpoleAutoencoder, seed: int = 0) -> TadpoleAutoencoder:
    """Add noise to every parameter: the zero-initialised output conv would otherwise hide the latent."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> TadpoleAutoencoder:
    """A small-crop S model with non-trivial weights."""
    torch.manual_seed(0)
    return _perturbed(TadpoleAutoencoder("S", crop_size=32))


@pytest.mark.parametrize("size", sorted(TADPOLE_CONFIGS))
def test_state_dicts_match_official_layout(size: str) -> None:
    with torch.device("meta"):
        model = TadpoleAutoencoder(size)
    for part in ("encoder", "decoder"):
        ours = {k: list(v.shape) for k, v in getattr(model, part).state_dict().items()}
        assert ours == ANCHORS[f"tadpole_{size.lower()}_{part}"], f"{size} {part}"
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == PUBLISHED_PARAMS[size]
    assert model.latent_channels == 64 * 4 * {"S": 1, "B": 2, "L": 4}[size]
    assert model.downsample_factor == 16


def test_loads_official_safetensors_strict(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    model = TadpoleAutoencoder("S")
    for part in ("encoder", "decoder"):
        state = {}
        for name, shape in ANCHORS[f"tadpole_s_{part}"].items():
            if name.endswith("relative_position_index"):
                state[name] = torch.randint(0, 343, shape, generator=gen)
            else:
                state[name] = torch.randn(shape, generator=gen)
        path = tmp_path / f"tadpole_s_{part}.safetensors"
        save_file(state, str(path))
        module = getattr(model, part)
        module.load_state_dict(load_file(str(path)), strict=True)
        for name, value in module.state_dict().items():
            assert torch.equal(value, state[name].to(value.dtype)), name


def test_channels_are_folded_into_the_batch(model: TadpoleAutoencoder) -> None:
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        z = model.encode(x)
        z0, z1 = model.encode(x[:, :1]), model.encode(x[:, 1:])
        y = model(x)
        y1 = model(x[:, 1:])
    c = model.latent_channels
    assert z.shape == (1, 2 * c, 2, 2, 2)
    torch.testing.assert_close(z[:, :c], z0, **TOL)
    torch.testing.assert_close(z[:, c:], z1, **TOL)
    torch.testing.assert_close(y[:, 1:], y1, **TOL)


def test_large_fields_are_tiled_into_independent_crops(model: TadpoleAutoencoder) -> None:
    x = torch.randn(1, 1, 64, 64, 32)
    with torch.no_grad():
        z = model.encode(x)
        y = model(x)
        assert z.shape[2:] == (4, 4, 2) and y.shape == x.shape
        for i in range(2):
            for j in range(2):
                tile = x[:, :, 32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)]
                torch.testing.assert_close(
                    z[:, :, 2 * i : 2 * (i + 1), 2 * j : 2 * (j + 1)], model.encode(tile), **TOL
                )
                torch.testing.assert_close(
                    y[:, :, 32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)], model(tile), **TOL
                )


def test_chunked_equals_unchunked(model: TadpoleAutoencoder) -> None:
    x = torch.randn(1, 2, 64, 32, 32)
    chunked = TadpoleAutoencoder("S", crop_size=32, chunk_size=3)
    chunked.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(chunked.eval()(x), model(x), **TOL)


def test_whole_field_without_cropping(model: TadpoleAutoencoder) -> None:
    uncropped = TadpoleAutoencoder("S", crop_size=None)
    uncropped.load_state_dict(model.state_dict())
    x = torch.randn(1, 1, 48, 32, 16)
    with torch.no_grad():
        y = uncropped.eval()(x)
        assert y.shape == x.shape
        assert uncropped.encode(x).shape == (1, uncropped.latent_channels, 3, 2, 1)
        # A field no larger than the crop is one crop, so crop_size=64 gives the same result.
        big_crop = TadpoleAutoencoder("S", crop_size=64)
        big_crop.load_state_dict(model.state_dict())
        torch.testing.assert_close(big_crop.eval()(x), y, **TOL)


def test_distribution_and_sampling(model: TadpoleAutoencoder) -> None:
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        mean, logvar = model.encode_distribution(x)
        assert mean.shape == logvar.shape == (1, model.latent_channels, 2, 2, 2)
        assert logvar.min() >= -30 and logvar.max() <= 20
        torch.testing.assert_close(model.encode(x), mean)
        out = model.reconstruct(x)
        torch.testing.assert_close(out.mean, mean)
        torch.testing.assert_close(out.reconstruction, model.decode(mean))
        sampler = TadpoleAutoencoder("S", crop_size=32, latent="sample")
        sampler.load_state_dict(model.state_dict())
        torch.manual_seed(3)
        z = sampler.eval().encode(x)
        torch.manual_seed(3)
        noise = torch.randn_like(mean)
        torch.testing.assert_close(z, mean + torch.exp(0.5 * logvar) * noise, **TOL)


@pytest.mark.parametrize(
    ("shape", "crop", "expected"),
    [
        ((1, 1, 40, 32, 32), 64, ["40", "along x", "multiple of 16", "e.g. 32 (crop) or 48 (pad)"]),
        ((1, 1, 32, 32, 24), None, ["24", "along z", "multiple of 16"]),
        ((1, 1, 96, 64, 64), 64, ["96", "along x", "multiple of 64", "crop_size=None"]),
    ],
)
def test_bad_spatial_sizes_raise_helpful_errors(shape: tuple, crop: int | None, expected: list[str]) -> None:
    with torch.device("meta"):
        model = TadpoleAutoencoder("S", crop_size=crop)
    with pytest.raises(ValueError) as info:
        model.encode(torch.zeros(shape, device="meta"))
    for fragment in expected:
        assert fragment in str(info.value)


def test_bad_constructor_arguments_raise() -> None:
    with pytest.raises(ValueError, match=r"crop_size=40 .*multiple of 16.*crop_size=32 or 48"):
        TadpoleAutoencoder("S", crop_size=40)
    with pytest.raises(ValueError, match="'XL'"):
        TadpoleAutoencoder("XL")
    with pytest.raises(ValueError, match="attention_backend='flash'"):
        TadpoleAutoencoder("S", attention_backend="flash")
    with pytest.raises(ValueError, match="latent='median'"):
        TadpoleAutoencoder("S", latent="median")


def test_attention_backends_agree(model: TadpoleAutoencoder) -> None:
    x = torch.randn(1, 1, 32, 32, 32, requires_grad=True)
    outputs, grads = {}, {}
    for backend in ("sdpa", "math"):
        model.set_attention_backend(backend)
        y = model(x)
        (grads[backend],) = torch.autograd.grad(y.square().sum(), x)
        outputs[backend] = y.detach()
    model.set_attention_backend("sdpa")
    torch.testing.assert_close(outputs["sdpa"], outputs["math"], rtol=1e-4, atol=1e-5)
    scale = grads["math"].abs().max()
    torch.testing.assert_close(grads["sdpa"] / scale, grads["math"] / scale, **TOL)


def test_xformers_backend_refuses_cpu(model: TadpoleAutoencoder) -> None:
    model.set_attention_backend("xformers")
    try:
        with pytest.raises(RuntimeError, match="xformers"):
            model.encode(torch.randn(1, 1, 16, 16, 16))
    finally:
        model.set_attention_backend("sdpa")


def test_latent_grid_is_one_sixteenth(model: TadpoleAutoencoder) -> None:
    z = torch.randn(2, 2 * model.latent_channels, 2, 4, 2)
    with torch.no_grad():
        y = model.decode(z)
    assert y.shape == (2, 2, 32, 64, 32)
    assert math.prod(y.shape[2:]) == 16**3 * math.prod(z.shape[2:])


def test_channel_groups_for_multichannel_encoders() -> None:
    model = TadpoleAutoencoder("S", crop_size=16, in_channels=2).eval()
    assert model.encoder.conv_encoder.feature_embed.in_channels == 2
    with torch.no_grad():
        z = model.encode(torch.randn(1, 4, 16, 16, 16))
        assert z.shape == (1, 2 * model.latent_channels, 1, 1, 1)
        assert model.decode(z).shape == (1, 4, 16, 16, 16)
    with pytest.raises(ValueError, match="3 channels cannot be split into groups of 2"):
        model.encode(torch.randn(1, 3, 16, 16, 16))
