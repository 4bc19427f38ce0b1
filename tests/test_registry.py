"""The checkpoint registry: bundled entries, the user registry on top, schema errors, building every supported
entry, and load_pretrained / load_weights from registry names and paths (local file:// sources, no network)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import save_file
from torch import nn

from pfm.build import CONF_DIR, build_model, load_pretrained, model_config
from pfm.checkpoints import get_entry, load_registry, load_weights
from pfm.checkpoints.registry import BUNDLED_REGISTRY, export_entry

PUBLISHED = {
    "tadpole-s": "hf://thuerey-group/Tadpole/tadpole_s_encoder.safetensors",
    "tadpole-b": "hf://thuerey-group/Tadpole/tadpole_b_encoder.safetensors",
    "tadpole-l": "hf://thuerey-group/Tadpole/tadpole_l_decoder.safetensors",
    "gphyt-s": "hf://flwi/Physics-Foundation-Model/gphyt-S.pth",
    "gphyt-m": "hf://flwi/Physics-Foundation-Model/gphyt-M.pth",
    "gphyt-l": "hf://flwi/Physics-Foundation-Model/gphyt-L.pth",
    "gphyt-xl": "hf://flwi/Physics-Foundation-Model/gphyt-XL.pth",
    "tito-3m": "hf://pantoniadis/platito/tito_3M.ckpt",
    "platito-3m": "hf://pantoniadis/platito/platito_3M.ckpt",
    "platito-19m": "hf://pantoniadis/platito/platito_19M.ckpt",
    "platito-36m": "hf://pantoniadis/platito/platito_36M.ckpt",
}


@pytest.fixture
def user_registry(tmp_path, monkeypatch):
    path = tmp_path / "registry.yaml"
    path.write_text("models: {}\n")
    monkeypatch.setenv("PFM_REGISTRY", str(path))
    monkeypatch.setenv("PFM_CACHE", str(tmp_path / "cache"))
    return path


def _write(path: Path, models: dict) -> None:
    path.write_text(yaml.safe_dump({"models": models}))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundled_registry_lists_every_published_model(user_registry):
    entries = load_registry()
    for name, url in PUBLISHED.items():
        assert url in [f.url for f in entries[name].files], name
    assert len(entries["tadpole-s"].files) == 2, "encoder and decoder"
    assert {entries[n].license for n in ("tadpole-s", "tadpole-b", "tadpole-l")} == {"Apache-2.0"}
    assert {entries[n].license for n in PUBLISHED if n.startswith("gphyt")} == {"MIT"}
    for entry in entries.values():
        assert entry.paper and entry.trained_on and entry.num_parameters and entry.revision, entry.name
        assert entry.source == str(BUNDLED_REGISTRY)


BUNDLED = load_registry(
    BUNDLED_REGISTRY
)  # the user file given is the bundled one itself: bundled entries only
SUPPORTED = sorted(n for n, e in BUNDLED.items() if e.status == "supported")


def test_some_entries_are_supported():
    assert {"tadpole-s", "tadpole-b", "tadpole-l", "gphyt-s", "gphyt-xl", "platito-19m", "tito-3m"} <= set(
        SUPPORTED
    )


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_entry_composes_and_builds_on_meta(name):
    entry = BUNDLED[name]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={entry.model}"])
    with torch.device("meta"):
        model = build_model(cfg.model, dict(entry.spec))
    count = sum(p.numel() for p in model.parameters())
    # the registry's count is the published one, rounded; GPhyT builds ~17% smaller (pfm folds the official
    # double q/k/v projection into one) and the 3M TITO/PLaTITO configs guess unpublished widths (~3.7M), so a
    # wrong size (2x-4x apart here) is what this catches
    assert 0.75 < count / entry.num_parameters < 1.3, (count, entry.num_parameters)


def test_user_registry_adds_and_overrides(user_registry):
    _write(
        user_registry,
        {
            "mine": {
                "family": "conv_vae",
                "model": "conv_vae",
                "files": [{"url": "https://x.org/a.bin", "sha256": ""}],
            },
            "tadpole-s": {"family": "tadpole", "model": "tadpole_b", "files": ["https://x.org/b.bin"]},
        },
    )
    entries = load_registry()
    assert entries["mine"].model == "conv_vae" and entries["mine"].status == "supported"
    assert entries["tadpole-s"].model == "tadpole_b" and entries["tadpole-s"].source == str(user_registry)
    assert entries["tadpole-b"].source == str(BUNDLED_REGISTRY)
    with pytest.raises(KeyError, match=r"No registry entry 'tadpole-x'.*Did you mean"):
        get_entry("tadpole-x")


BAD = [
    (
        {"family": "x", "files": [{"url": "https://a/b", "sha256": ""}]},
        r"'bad'.*missing required key\(s\) \['model'\].*smallest entry",
    ),
    ({"family": "x", "model": "m", "files": [{"url": "ftp://a/b"}]}, r"'bad'.*files\[0\]\.url.*hf://"),
    (
        {"family": "x", "model": "m", "files": [{"url": "https://a/b", "sha256": "abc"}]},
        r"'bad'.*sha256.*64 hex.*sha256sum",
    ),
    (
        {"family": "x", "model": "m", "files": [{"url": "https://a/b", "sha": ""}]},
        r"'bad'.*unknown key\(s\) \['sha'\]",
    ),
    (
        {"family": "x", "model": "m", "files": [], "licence": "MIT"},
        r"'bad'.*missing required key\(s\) \['files'\]",
    ),
    (
        {"family": "x", "model": "m", "files": ["https://a/b"], "licence": "MIT"},
        r"'bad'.*unknown key\(s\) \['licence'\].*spelling",
    ),
    (
        {"family": "x", "model": "m", "files": ["https://a/b"], "status": "maybe"},
        r"'bad'.*status is 'maybe'.*supported",
    ),
    ({"family": "x", "model": "m", "files": "https://a/b"}, r"'bad'.*files is.*give a list"),
    (
        {"family": "x", "model": "m", "files": ["https://a/b"], "num_parameters": "8M"},
        r"'bad'.*num_parameters.*integer",
    ),
    ({"family": "x", "model": "m", "files": [{"url": "https://a/b", "num_bytes": -1}]}, r"'bad'.*num_bytes"),
]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_schema_errors_name_the_entry_the_key_and_the_fix(user_registry, raw, message):
    _write(user_registry, {"bad": raw})
    with pytest.raises(ValueError, match=message) as err:
        load_registry()
    assert str(user_registry) in str(err.value)


def test_missing_user_registry_and_bad_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("PFM_REGISTRY", str(tmp_path / "none.yaml"))
    with pytest.raises(FileNotFoundError, match=r"none\.yaml.*PFM_REGISTRY"):
        load_registry()
    (tmp_path / "r.yaml").write_text("models: [1, 2")
    monkeypatch.setenv("PFM_REGISTRY", str(tmp_path / "r.yaml"))
    with pytest.raises(ValueError, match=r"r\.yaml is not valid YAML"):
        load_registry()


def _tadpole_files(folder: Path) -> nn.Module:
    from pfm.models import TadpoleAutoencoder

    source = TadpoleAutoencoder("S", crop_size=16)
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("encoder", "decoder"):
        state = {k: v.contiguous() for k, v in getattr(source, part).state_dict().items()}
        save_file(state, folder / f"tadpole_s_{part}.safetensors")
    return source.eval()


def test_load_pretrained_builds_tadpole_from_a_registry_name(tmp_path, user_registry):
    source = _tadpole_files(tmp_path / "published")
    files = [
        {"url": (tmp_path / "published" / f"tadpole_s_{p}.safetensors").as_uri(), "sha256": ""}
        for p in ("encoder", "decoder")
    ]
    files[0]["sha256"] = _sha(tmp_path / "published" / "tadpole_s_encoder.safetensors")
    _write(
        user_registry,
        {"tiny": {"family": "tadpole", "model": "tadpole_s", "spec": {"crop_size": 16}, "files": files}},
    )
    model = load_pretrained("tiny")
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))
    assert not model.training
    # the same name as init_from: weights into an already built model
    from pfm.models import TadpoleAutoencoder

    target = load_weights(TadpoleAutoencoder("S", crop_size=16), "tiny")
    torch.testing.assert_close(target.encoder.state_dict(), source.encoder.state_dict())
    # a local file that changes after its hash was registered is refused, and kept (it is the user's)
    (tmp_path / "published" / "tadpole_s_encoder.safetensors").write_bytes(b"changed")
    with pytest.raises(RuntimeError, match=r"tadpole_s_encoder\.safetensors.*sha256.*kept"):
        load_pretrained("tiny")


def test_unsupported_entry_is_refused_clearly(user_registry):
    _write(
        user_registry,
        {"later": {"family": "x", "model": "tadpole_s", "status": "unsupported", "files": ["https://a/b"]}},
    )
    with pytest.raises(
        ValueError, match=r"cannot build 'later' yet.*status: unsupported.*pfm download later"
    ):
        load_pretrained("later")


def _export_folder(folder: Path) -> nn.Module:
    """A folder laid out like `pfm export` writes it, for a small ConvVAE."""
    spec = {"num_channels": 1, "crop_size": 16, "num_spatial_dims": 3}
    model = build_model(model_config("conv_vae"), spec)
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    config = {"model": dict(model_config("conv_vae")), "head": None, "data_spec": spec, "global_step": 1}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "README.md").write_text("# a model card\n")
    names = ("model.safetensors", "config.yaml", "README.md")
    (folder / "SHA256SUMS").write_text("".join(f"{_sha(folder / n)}  {n}\n" for n in names))
    return model


def test_export_entry_round_trips_through_the_registry(tmp_path, user_registry):
    folder = tmp_path / "export"
    model = _export_folder(folder)
    entry = export_entry(folder)
    assert entry["model"] == "conv_vae" and entry["num_parameters"] == sum(
        p.numel() for p in model.parameters()
    )
    assert entry["files"][0]["sha256"] == _sha(folder / "model.safetensors")
    hosted = export_entry(folder, url_prefix="hf://me/my-model")
    assert hosted["files"][0]["url"] == "hf://me/my-model/model.safetensors"
    _write(user_registry, {"my-vae": entry})
    loaded = load_pretrained("my-vae")
    x = torch.randn(2, 1, 16, 16, 16)
    torch.testing.assert_close(_out(loaded, x), _out(model.eval(), x))
    reloaded = load_pretrained(folder)  # the folder itself, by path
    torch.testing.assert_close(reloaded.state_dict(), model.state_dict())


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model(x)
    return y[0] if isinstance(y, tuple) else y


class _OfficialNet(nn.Module):
    """Stands for GPhyT/PLaTITO: its own names differ from the official file's; a converter maps them."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.seen: dict | None = None

    def load_official_state_dict(self, state_dict):
        self.seen = dict(state_dict)
        self.proj.weight.data.copy_(state_dict["module._orig_mod.w"])
        self.proj.bias.data.copy_(state_dict["module._orig_mod.b"])


@pytest.mark.parametrize("layout", ["flat", "model_state_dict", "lightning"])
def test_official_files_go_to_the_models_converter(tmp_path, layout):
    weights = {"module._orig_mod.w": torch.randn(2, 3), "module._orig_mod.b": torch.randn(2)}
    obj = {
        "flat": weights,
        "model_state_dict": {"model_state_dict": weights, "epoch": 4},
        "lightning": {"state_dict": weights, "hyper_parameters": {"lr": 1e-3}},
    }[layout]
    torch.save(obj, tmp_path / "official.pth")
    model = load_weights(_OfficialNet(), tmp_path / "official.pth")
    assert set(model.seen) == set(weights)
    torch.testing.assert_close(model.proj.weight, weights["module._orig_mod.w"])


def test_gphyt_official_file_loads_by_name(tmp_path, user_registry):
    from pfm.models import GPhyT

    source = GPhyT("S").eval()
    with torch.no_grad():  # the official layout zero-fills absent fields; a random stand-in would not survive
        source.absent_embedding.zero_()
    # the official file: a nested, DDP/compile-prefixed state dict in a .pth, plus a payload-free optimizer
    official = {f"module._orig_mod.{k}": v for k, v in source.to_official_state_dict().items()}
    torch.save({"model_state_dict": official, "epoch": 3}, tmp_path / "gphyt-S.pth")
    url = (tmp_path / "gphyt-S.pth").as_uri()
    entry = dict(BUNDLED["gphyt-s"].to_dict(), files=[{"url": url, "sha256": _sha(tmp_path / "gphyt-S.pth")}])
    _write(user_registry, {"gphyt-s": entry})
    model = load_pretrained("gphyt-s")
    x = torch.randn(1, 4, 256, 128, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=1e-4, atol=1e-4)


def test_publish_dry_run_checks_the_folder_and_prints_the_entry(tmp_path, user_registry, capsys):
    from pfm.cli import main as pfm_cli

    folder = tmp_path / "export"
    _export_folder(folder)
    assert pfm_cli(["publish", str(folder), "--repo", "my-lab/my-vae", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload to https://huggingface.co/my-lab/my-vae (public)" in out
    entry = yaml.safe_load("\n".join(line for line in out.splitlines() if not line.startswith("#")))
    assert entry["my-vae"]["model"] == "conv_vae"
    urls = [f["url"] for f in entry["my-vae"]["files"]]
    assert urls == ["hf://my-lab/my-vae/model.safetensors", "hf://my-lab/my-vae/config.yaml"]
    assert entry["my-vae"]["files"][0]["sha256"] == _sha(folder / "model.safetensors")
    with pytest.raises(SystemExit, match="ORG/NAME"):
        pfm_cli(["publish", str(folder), "--repo", "no-slash", "--dry-run"])
    (folder / "config.yaml").write_text("changed: true\n")
    assert pfm_cli(["publish", str(folder), "--repo", "my-lab/my-vae", "--dry-run"]) == 1
    assert "config.yaml has SHA-256" in capsys.readouterr().err, (
        "a folder that changed after export is refused"
    )
    (folder / "README.md").unlink()
    with pytest.raises(SystemExit, match=r"lacks \['README.md'\].*pfm export"):
        pfm_cli(["publish", str(folder), "--repo", "my-lab/my-vae", "--dry-run"])


def test_info_without_a_name_keeps_its_output_and_with_one_shows_the_entry(user_registry, capsys):
    from pfm.cli import main as pfm_cli

    assert pfm_cli(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pfm ") and "PDE families: " in out and "heat" not in out.split("\n")[0]
    assert pfm_cli(["info", "gphyt-m"]) == 0
    out = capsys.readouterr().out
    assert "hf://flwi/Physics-Foundation-Model/gphyt-M.pth" in out and "loadable by pfm: yes" in out
    assert "gphyt-M.pth: not cached" in out
    assert pfm_cli(["info", "gphyt-q"]) == 1
    assert "Did you mean gphyt-" in capsys.readouterr().err


def test_platito_lightning_checkpoint_loads_by_name(tmp_path, user_registry):
    from pfm.models import PLaTITO

    source = build_model(model_config("platito_19m"), {"plm_dim": 8})
    ckpt = {"state_dict": source.to_official_state_dict(), "hyper_parameters": {"lr": 1e-4}, "epoch": 2}
    torch.save(ckpt, tmp_path / "platito_19M.ckpt")
    url = (tmp_path / "platito_19M.ckpt").as_uri()
    entry = dict(BUNDLED["platito-19m"].to_dict(), files=[{"url": url, "sha256": ""}])
    _write(user_registry, {"platito-19m": entry})
    model = load_pretrained("platito-19m")
    assert isinstance(model, PLaTITO) and not model.training
    torch.testing.assert_close(model.state_dict(), source.state_dict())
    # and as init_from: into a model built from the run's config
    target = load_weights(build_model(model_config("platito_19m"), {"plm_dim": 8}), "platito-19m")
    torch.testing.assert_close(target.state_dict(), source.state_dict())
