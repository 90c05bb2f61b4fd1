"""Product code uses Prefect's public API and the seam (deploy_runs/prefect_compat) only: no
import of a private Prefect module or name, no Prefect-private keyword or attribute, no subclass
of a Prefect class that is not meant to be extended (a Block is)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEAM = ROOT / "deploy_runs" / "prefect_compat"
PRODUCT = [p for folder in ("deploy_runs", "flows", "blocks") for p in (ROOT / folder).rglob("*.py")
           if SEAM not in p.parents]
# Prefect-private attributes a product module could reach on an object of Prefect's
PRIVATE_ATTRIBUTES = {"_client", "_add_csrf_headers", "_sync", "_queue", "_instances",
                      "_command_configured", "_children", "_run_exitfuncs"}
EXTENSIBLE = {"Block"}  # Prefect's classes meant to be subclassed by users


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found, prefect_names = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prefect":
            for alias in node.names:
                prefect_names.add(alias.asname or alias.name)
                if _private(node.module or "") or _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "prefect" and _private(alias.name):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.keyword) and node.arg == "_sync":
            found.append(f"{node.value.lineno}: keyword _sync")
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"{node.lineno}: attribute .{node.attr}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base.id if isinstance(base, ast.Name) else None
                if name in prefect_names and name not in EXTENSIBLE:
                    found.append(f"{node.lineno}: class {node.name}({name})")
    return [f"{path.relative_to(ROOT)}:{v}" for v in found]


def test_product_code_uses_no_prefect_internals():
    assert len(PRODUCT) > 30
    found = [v for path in PRODUCT for v in violations(path)]
    assert found == [], "Prefect internals outside deploy_runs/prefect_compat:\n" + "\n".join(found)


def test_the_check_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from prefect.runner._process_manager import ProcessHandle\n"
        "from prefect.logging.handlers import APILogWorker\n"
        "import prefect._internal.concurrency\n"
        "x = client._client\n"
        "y = Block.load('a', _sync=True)\n"
        "class W(APILogWorker):\n    pass\n")
    sample = sample.rename(ROOT / "tests" / "unit" / f"_seam_sample_{tmp_path.name}.py")
    try:
        found = violations(sample)
    finally:
        sample.unlink()
    assert len(found) == 5, found


def test_ci_runs_the_unit_tests_on_the_oldest_prefect_the_pin_allows():
    import re
    import tomllib

    pin = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
               ["dependencies"] if d.startswith("prefect"))
    lowest = re.search(r">=\s*([\d.]+)", pin).group(1)
    oldest = re.search(r"^PREFECT_OLDEST \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert oldest and tuple(map(int, oldest.group(1).split("."))) == \
        tuple(map(int, (lowest + ".0.0").split(".")[:3])), (pin, oldest)
    assert "make unit-oldest" in (ROOT / ".ci" / "run").read_text()
