"""pfm-datagen: list, write, bench."""

from __future__ import annotations

import pytest

from datagen.cli import main

# small FFTs and models on a shared 2-core machine: one torch thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_list(capsys) -> None:
    assert main(["list"]) == 0
    assert "kuramoto_sivashinsky" in capsys.readouterr().out.split()


def test_write_then_read(tmp_path, capsys) -> None:
    out = tmp_path / "ks"
    args = [
        "write",
        "--pde",
        "kuramoto_sivashinsky",
        "--samples",
        "6",
        "--out",
        str(out),
        "--n",
        "32",
        "--crop",
        "8",
    ]
    assert main([*args, "--samples-per-shard", "4", "--num-trajectories", "2", "--batch", "2"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert (out / "format.json").is_file()


def test_bench_prints_throughput(capsys) -> None:
    assert (
        main(["bench", "--pde", "diffusion", "--n", "16", "--batch", "2", "--steps", "2", "--crop", "8"]) == 0
    )
    out = capsys.readouterr().out
    assert "gp-updates/s" in out and "diffusion" in out


def test_unknown_pde_lists_known(tmp_path) -> None:
    with pytest.raises(ValueError, match="Known PDEs"):
        main(["write", "--pde", "heat", "--samples", "1", "--out", str(tmp_path)])
