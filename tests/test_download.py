"""Verified downloads against a real HTTP server on 127.0.0.1: https files, hf:// through huggingface_hub
against a local server that answers like the Hub, and a fine-tune run from a registry name."""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, pfm_train

from pfm.checkpoints import download
from pfm.checkpoints.download import DownloadError, HashMismatchError, fetch
from pfm.checkpoints.registry import get_entry, load_registry

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeServer:
    """Serves ``files`` (URL path -> bytes) plain at ``/files/<name>`` and Hub-like at
    ``/<org>/<repo>/resolve/<revision>/<name>``; ``flags`` (name -> set) change its behaviour:
    ``drop_once`` (first GET stops mid-body), ``truncate`` (every GET stops mid-body), ``no_range`` (ignore
    Range), ``slow`` (pace the body). ``log`` records (method, name, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.flags: dict[str, set[str]] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self._dropped: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _name(self) -> tuple[str | None, bool]:
                path = self.path.split("?")[0]
                hub = re.match(r"^/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$", path)
                if hub:
                    return hub.group(4), True
                return (path.removeprefix("/files/") if path.startswith("/files/") else None), False

            def _answer(self, head: bool) -> None:
                name, hub = self._name()
                server.log.append(("HEAD" if head else "GET", name or self.path, self.headers.get("Range")))
                data = server.files.get(name or "")
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    if hub:
                        self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                flags = server.flags.get(name, set())
                start = 0
                match = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and "no_range" not in flags:
                    start = int(match.group(1))
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                if hub:
                    digest = hashlib.sha256(data).hexdigest()
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("ETag", f'"{digest}"')
                    self.send_header("X-Linked-Etag", f'"{digest}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.end_headers()
                if head:
                    return
                cut = len(body)
                if "truncate" in flags or ("drop_once" in flags and name not in server._dropped):
                    server._dropped.add(name)
                    cut = len(body) // 2
                step = 4096
                for i in range(0, cut, step):
                    self.wfile.write(body[i : min(i + step, cut)])
                    if "slow" in flags:
                        time.sleep(0.002)
                self.wfile.flush()
                if cut < len(body):
                    self.close_connection = True

            def do_HEAD(self):
                self._answer(head=True)

            def do_GET(self):
                self._answer(head=False)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def gets(self, name: str) -> list[tuple[str, str, str | None]]:
        """The GET requests for ``name``."""
        return [r for r in self.log if r[0] == "GET" and r[1] == name]


@pytest.fixture
def server():
    s = FakeServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cache and a user registry file in tmp_path; offline switches cleared."""
    monkeypatch.setenv("PFM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PFM_REGISTRY", str(tmp_path / "registry.yaml"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("PFM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download, "MAX_ATTEMPTS", 3)
    (tmp_path / "registry.yaml").write_text("models: {}\n")
    return tmp_path


def _register(path: Path, name: str, files: list[dict], **extra) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("models", {})
    data["models"] = data["models"] or {}
    data["models"][name] = {"family": "conv_vae", "model": "conv_vae", "files": files, **extra}
    path.write_text(yaml.safe_dump(data))


def _blob(seed: int, size: int = 200_000) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_then_cache_hit_without_a_request(server, env):
    data = _blob(1)
    server.files["a.bin"] = data
    _register(env / "registry.yaml", "a", [{"url": f"{server.url}/files/a.bin", "sha256": _sha(data)}])
    (path,) = fetch(get_entry("a"), progress=False)
    assert path.read_bytes() == data
    assert len(server.gets("a.bin")) == 1
    (again,) = fetch(get_entry("a"), progress=False)
    assert again == path and len(server.log) == 1, "a verified cached file is used without any request"
    assert not list(path.parent.glob("*.part"))


def test_resume_after_the_connection_drops_mid_body(server, env):
    data = _blob(2)
    server.files["b.bin"] = data
    server.flags["b.bin"] = {"drop_once"}
    _register(env / "registry.yaml", "b", [{"url": f"{server.url}/files/b.bin", "sha256": _sha(data)}])
    (path,) = fetch(get_entry("b"), progress=False)
    assert path.read_bytes() == data
    gets = server.gets("b.bin")
    assert len(gets) == 2
    assert gets[0][2] is None and gets[1][2] == f"bytes={len(data) // 2}-", "the second request resumes"


def test_restart_when_the_server_ignores_range(server, env):
    data = _blob(3)
    server.files["c.bin"] = data
    server.flags["c.bin"] = {"drop_once", "no_range"}
    _register(env / "registry.yaml", "c", [{"url": f"{server.url}/files/c.bin", "sha256": _sha(data)}])
    (path,) = fetch(get_entry("c"), progress=False)
    assert path.read_bytes() == data and len(server.gets("c.bin")) == 2


def test_truncated_body_never_becomes_a_complete_file(server, env):
    data = _blob(4)
    server.files["d.bin"] = data
    server.flags["d.bin"] = {"truncate", "no_range"}
    _register(env / "registry.yaml", "d", [{"url": f"{server.url}/files/d.bin", "sha256": _sha(data)}])
    with pytest.raises(DownloadError, match=r"d\.bin could not be downloaded in 3 attempts.*resumes"):
        fetch(get_entry("d"), progress=False)
    folder = download._url_path(get_entry("d").files[0]).parent
    assert not (folder / "d.bin").exists(), "no file under the final name"
    assert len(server.gets("d.bin")) == 3


def test_wrong_file_is_caught_by_the_hash(server, env):
    # the server sends a whole, well-formed body that is not the registered file: the sha256 check stops it
    good, served = _blob(5), _blob(5)[:1000]
    server.files["e.bin"] = served
    _register(env / "registry.yaml", "e", [{"url": f"{server.url}/files/e.bin", "sha256": _sha(good)}])
    with pytest.raises(HashMismatchError) as err:
        fetch(get_entry("e"), progress=False)
    message = str(err.value)
    assert (
        "e.bin" in message
        and _sha(good) in message
        and _sha(served) in message
        and "pfm download e" in message
    )
    folder = download._url_path(get_entry("e").files[0]).parent
    assert not (folder / "e.bin").exists() and not (folder / "e.bin.part").exists(), (
        "the bad file was deleted"
    )


def test_404_names_the_url(server, env):
    _register(env / "registry.yaml", "f", [{"url": f"{server.url}/files/nothing.bin", "sha256": ""}])
    with pytest.raises(DownloadError, match=r"nothing\.bin answered HTTP 404.*registry"):
        fetch(get_entry("f"), progress=False)


def test_unknown_hash_is_recorded_on_first_download_then_enforced(server, env, caplog):
    data = _blob(6)
    server.files["g.bin"] = data
    _register(env / "registry.yaml", "g", [{"url": f"{server.url}/files/g.bin", "sha256": ""}])
    with caplog.at_level(logging.WARNING, logger="pfm.checkpoints"):
        (path,) = fetch(get_entry("g"), progress=False)
    assert "no sha256 in the registry" in caplog.text and "pfm registry pin g" in caplog.text
    assert download.recorded_hash(get_entry("g").files[0]) == _sha(data)
    path.write_bytes(b"tampered")
    with pytest.raises(HashMismatchError, match="recorded on first download"):
        fetch(get_entry("g"), progress=False)
    assert not path.exists()


def test_offline_uses_the_cache_and_names_what_is_missing(server, env, monkeypatch):
    one, two = _blob(7), _blob(8)
    server.files |= {"h1.bin": one, "h2.bin": two}
    files = [
        {"url": f"{server.url}/files/{n}", "sha256": _sha(d)} for n, d in (("h1.bin", one), ("h2.bin", two))
    ]
    _register(env / "registry.yaml", "h", files)
    fetch_one = get_entry("h").files[0]
    download.fetch_file(fetch_one, progress=False)
    monkeypatch.setenv("PFM_OFFLINE", "1")
    before = len(server.log)
    with pytest.raises(DownloadError, match=r"Offline.*1 file\(s\) of 'h'.*h2\.bin") as err:
        fetch(get_entry("h"), progress=False)
    assert "h1.bin" not in str(err.value)
    assert len(server.log) == before, "offline sends no request"


def _cli(args: list[str], env_vars: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pfm.cli", *args],
        env={**os.environ, **env_vars},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        "PFM_CACHE": str(tmp / "cache"),
        "PFM_REGISTRY": str(tmp / "registry.yaml"),
        "HF_HOME": str(tmp / "hf"),
        **extra,
    }


def test_two_processes_download_one_file_once(server, env):
    data = _blob(9, 2_000_000)
    server.files["big.bin"] = data
    server.flags["big.bin"] = {"slow"}
    _register(env / "registry.yaml", "big", [{"url": f"{server.url}/files/big.bin", "sha256": _sha(data)}])
    procs = [_cli(["download", "big", "--quiet"], _cli_env(env)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outs, strict=False):
        assert proc.returncode == 0, err[-2000:]
    paths = [out.strip().splitlines()[-1] for out, _ in outs]
    assert paths[0] == paths[1] and Path(paths[0]).read_bytes() == data
    assert len(server.gets("big.bin")) == 1, "one download, both processes get the file"


def test_hf_files_through_huggingface_hub_against_a_local_hub(server, env):
    enc, dec = _blob(10), _blob(11)
    server.files |= {"m_encoder.safetensors": enc, "m_decoder.safetensors": dec}
    files = [
        {"url": "hf://test-org/test-model/m_encoder.safetensors", "sha256": _sha(enc)},
        {"url": "hf://test-org/test-model/m_decoder.safetensors", "sha256": ""},
    ]
    _register(env / "registry.yaml", "hub", files)
    hub_env = _cli_env(env, HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1")
    proc = _cli(["download", "hub"], hub_env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    lines = out.strip().splitlines()[-2:]
    assert [Path(p).name for p in lines] == ["m_encoder.safetensors", "m_decoder.safetensors"]
    assert Path(lines[0]).read_bytes() == enc and Path(lines[1]).read_bytes() == dec
    assert str(env / "hf") in lines[0] and f"snapshots/{COMMIT}" in lines[0], "huggingface_hub's own cache"
    assert "no sha256 in the registry" in err, "the unpinned file warns"
    assert any(r[0] == "GET" and r[1] == "m_encoder.safetensors" for r in server.log)

    # offline: served from huggingface_hub's cache with no request
    before = len(server.log)
    proc = _cli(["download", "hub", "--quiet"], {**hub_env, "HF_HUB_OFFLINE": "1"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-2:] == lines and len(server.log) == before

    # pin writes both hashes, the sizes and the Hub commit into the user registry
    proc = _cli(["registry", "pin", "hub", "--quiet"], hub_env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    pinned = get_entry("hub", load_registry())
    assert [f.sha256 for f in pinned.files] == [_sha(enc), _sha(dec)]
    assert [f.num_bytes for f in pinned.files] == [len(enc), len(dec)] and pinned.revision == COMMIT

    # a corrupted blob in the HF cache is deleted and named
    Path(lines[1]).resolve().write_bytes(b"corrupt")
    proc = _cli(["download", "hub", "--quiet"], {**hub_env, "HF_HUB_OFFLINE": "1"})
    out, err = proc.communicate(timeout=300)
    assert (
        proc.returncode == 1
        and "m_decoder.safetensors" in err
        and _sha(dec) in err
        and _sha(b"corrupt") in err
    )
    assert not Path(lines[1]).exists()


def test_cli_list_info_and_download_print_what_they_should(server, env):
    data = _blob(12)
    server.files["p.bin"] = data
    _register(
        env / "registry.yaml",
        "mine",
        [{"url": f"{server.url}/files/p.bin", "sha256": _sha(data)}],
        num_parameters=1234567,
        license="MIT",
    )
    listed = _cli(["list"], _cli_env(env)).communicate(timeout=120)[0]
    row = next(line for line in listed.splitlines() if line.startswith("mine "))
    assert row.split() == ["mine", "conv_vae", "-", "1.2M", "MIT", "supported", "no"]
    assert any(line.startswith("tadpole-s ") for line in listed.splitlines()), "bundled entries stay"
    out = _cli(["download", "mine", "--quiet"], _cli_env(env)).communicate(timeout=120)[0]
    assert Path(out.strip().splitlines()[-1]).read_bytes() == data
    listed = _cli(["list"], _cli_env(env)).communicate(timeout=120)[0]
    assert next(line for line in listed.splitlines() if line.startswith("mine ")).split()[-1] == "yes"
    info = _cli(["info", "mine"], _cli_env(env)).communicate(timeout=120)[0]
    assert "cached at" in info and _sha(data) in info
    proc = _cli(["download", "nope"], _cli_env(env))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "No registry entry 'nope'" in err


@pytest.mark.slow
def test_finetune_from_a_registry_name_served_over_http(server, env, monkeypatch):
    from safetensors.torch import save

    from pfm.models import TadpoleAutoencoder

    source = TadpoleAutoencoder("S", crop_size=16)
    for part in ("encoder", "decoder"):
        state = {k: v.contiguous() for k, v in getattr(source, part).state_dict().items()}
        server.files[f"tadpole_s_{part}.safetensors"] = save(state)
    files = [
        {
            "url": f"{server.url}/files/tadpole_s_{p}.safetensors",
            "sha256": _sha(server.files[f"tadpole_s_{p}.safetensors"]),
        }
        for p in ("encoder", "decoder")
    ]
    _register(env / "registry.yaml", "tadpole-test", files, spec={"crop_size": 16})
    for key, value in _cli_env(env).items():
        monkeypatch.setenv(key, value)
    out = env / "run"
    result = pfm_train(
        [
            "experiment=tadpole_finetune",
            "init_from=tadpole-test",
            "logger=csv",
            "data.n=32",
            "data.window=3",
            "data.batch_size=1",
            "data.num_trajectories=1",
            "data.num_val_batches=1",
            "trainer.max_steps=1",
            "trainer.val_check_interval=1",
            "trainer.enable_progress_bar=false",
            "checkpoint_every_n_steps=1",
            "plots=false",
        ],
        out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(server.gets("tadpole_s_encoder.safetensors")) == 1
    assert len(server.gets("tadpole_s_decoder.safetensors")) == 1
    from pfm.checkpoints import read_checkpoint

    recorded = read_checkpoint(out / "checkpoints" / "last.ckpt")["pfm"]["config"]["init_from"]
    assert Path(recorded).name == "main" and "tadpole-test" in recorded, recorded


def test_progress_bar_of_a_fast_download_ends_at_100_percent(server, env, capfd):
    """A 300 kB file over 127.0.0.1 arrives within one refresh interval: the bar must still end full."""
    data = _blob(9, 300_000)
    server.files["p.bin"] = data
    _register(env / "registry.yaml", "p", [{"url": f"{server.url}/files/p.bin", "sha256": _sha(data)}])
    (path,) = fetch(get_entry("p"), progress=True)
    assert path.read_bytes() == data
    bar = capfd.readouterr().err
    last = [part for part in re.split(r"[\r\n]", bar) if part.strip()][-1]
    assert "100%" in last and "293k/293k" in last, repr(bar[-500:])
