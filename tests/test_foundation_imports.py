"""The two import packages import cleanly and keep their boundaries (docs/architecture.md: the layers).

The layers themselves are import-linter contracts in pyproject.toml; the last tests show that `lint-imports`
passes on the tree and fails when an upward import, an import cycle or an unplaced module is planted in a copy.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    return [package] + [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}.")]


@pytest.mark.parametrize("name", _modules("datagen") + _modules("pfm"))
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _imports_under(folder: Path) -> dict[Path, set[str]]:
    return {p: _imported_roots(p) for p in folder.rglob("*.py")}


def test_datagen_never_imports_pfm() -> None:
    offenders = [str(p) for p, roots in _imports_under(REPO / "datagen").items() if "pfm" in roots]
    assert not offenders, f"datagen must not import pfm: {offenders}"


def test_models_are_plain_modules() -> None:
    forbidden = {"lightning", "pytorch_lightning", "hydra", "omegaconf", "datagen", "wandb"}
    offenders = {
        str(p): sorted(roots & forbidden)
        for p, roots in _imports_under(REPO / "pfm" / "models").items()
        if roots & forbidden
    }
    assert not offenders, f"pfm.models must not import training, config or data code: {offenders}"
    distributed = [p for p in (REPO / "pfm" / "models").rglob("*.py") if "torch.distributed" in p.read_text()]
    assert not distributed, f"Sharding is applied from pfm/distributed, not inside models: {distributed}"


def _hydra_composition_imports(path: Path) -> list[str]:
    """Hydra imports other than ``hydra.utils`` (instantiate is plain construction, not composition)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "hydra"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "hydra":
            found += [node.module] if node.module != "hydra.utils" else []
    return found


def test_hydra_only_at_entry_points() -> None:
    # pfm launch composes the run config to check it before submitting; pfm evaluate composes data=<choice>
    allowed = {REPO / "pfm" / p for p in ("train.py", "cli.py", "launch.py", "evaluate.py")}
    offenders = {
        str(p): _hydra_composition_imports(p)
        for p in (REPO / "pfm").rglob("*.py")
        if p not in allowed and _hydra_composition_imports(p)
    }
    assert not offenders, f"Hydra composition belongs to the entry points only: {offenders}"


def _function_level_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, reason)`` of each import whose enclosing scope is a function; the reason is the comment on its
    lines, or on the comment, import or ``try:`` lines right above it ("" when there is none)."""
    lines = path.read_text().splitlines()

    def reason(node: ast.stmt) -> str:
        comments = [line.partition("#")[2] for line in lines[node.lineno - 1 : node.end_lineno]]
        row = node.lineno - 2
        while row >= 0 and lines[row].strip().startswith(("#", "import ", "from ", "try:")):
            comments.append(lines[row].partition("#")[2])
            row -= 1
        return " ".join(c.strip() for c in comments if c.strip())

    found = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child.lineno, reason(child)))
            walk(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    walk(ast.parse("\n".join(lines), filename=str(path)), False)
    return found


def test_every_function_level_import_says_what_it_avoids_loading() -> None:
    """An import inside a function stays only to avoid loading an optional or slow dependency, with a comment
    naming it (docs/architecture.md, "Layers")."""
    files = sorted((REPO / "pfm").rglob("*.py")) + sorted((REPO / "datagen").rglob("*.py"))
    silent = [
        f"{p.relative_to(REPO)}:{line}" for p in files for line, why in _function_level_imports(p) if not why
    ]
    assert not silent, f"function-level imports without a comment naming what they avoid loading: {silent}"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_nothing_imports_the_entry_points() -> None:
    """pfm.train and pfm.cli are entry points: library code below them never imports them (no cycles)."""
    entry_points = {"pfm.train", "pfm.cli"}
    offenders = {
        str(p): sorted(_imported_modules(p) & entry_points)
        for p in list((REPO / "pfm").rglob("*.py")) + list((REPO / "datagen").rglob("*.py"))
        if p.name not in {"train.py", "cli.py"} or p.parent != REPO / "pfm"
        if _imported_modules(p) & entry_points
    }
    assert not offenders, f"entry points must not be imported by library code: {offenders}"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the pfm and datagen packages found under ``root`` (its own pyproject.toml)."""
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root), "HOME": str(root)}
    return subprocess.run(
        [*command, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """pfm/, datagen/ and pyproject.toml copied, so that a planted import cannot touch the checkout."""
    for name in ("pfm", "datagen"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_lint_imports_passes_on_the_tree(tree_copy: Path) -> None:
    result = _lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_lint_imports_fails_on_planted_violations(tree_copy: Path) -> None:
    """An upward import inside a function (function-level imports count), a cycle between two models and a
    module placed in no layer, planted at once (one run of lint-imports): each is named."""
    models = tree_copy / "pfm" / "models"
    (models / "upward.py").write_text("def f():\n    import pfm.train\n")
    (models / "cycle.py").write_text("import pfm.models.tito\n")
    (models / "tito.py").write_text((models / "tito.py").read_text() + "\nimport pfm.models.cycle  # noqa\n")
    (tree_copy / "pfm" / "unplaced.py").write_text("X = 1\n")
    result = _lint_imports(tree_copy)
    assert result.returncode != 0, f"lint-imports passed with violations planted:\n{result.stdout[-2000:]}"
    for named in ("pfm.models.upward -> pfm.train", "No cycles are allowed in pfm.models", "pfm.unplaced"):
        assert named in result.stdout, f"{named!r} not reported:\n{result.stdout[-3000:]}"
