"""The layering holds: generic modules import no task, and communication knows
nothing of models, pipelines or training."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "mpitrain"
GENERIC = ["config.py", "jobfile.py", "task.py", "layers.py", "runtime.py", "model_plan.py", "topology.py",
           "commands", "train", "pipeline", "dp", "comm", "data", "tp", "checkpoint", "slurm"]


def imports(path: Path) -> set[str]:
    """Absolute names of the mpitrain modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}
    return {n for n in found if n.startswith("mpitrain")}


def files(*names):
    for name in names:
        p = PKG / name
        yield from (sorted(p.rglob("*.py")) if p.is_dir() else [p])


@pytest.mark.parametrize("path", list(files(*GENERIC)), ids=lambda p: str(p.relative_to(PKG)))
def test_generic_module_imports_no_task(path):
    bad = sorted(n for n in imports(path) if n.startswith("mpitrain.tasks.") and n != "mpitrain.tasks.resolve_task")
    assert not bad, f"{path.relative_to(PKG)} imports {bad}"


@pytest.mark.parametrize("path", list(files("comm")), ids=lambda p: str(p.relative_to(PKG)))
def test_communication_knows_no_models(path):
    bad = sorted(n for n in imports(path)
                 if n.split(".")[1] in ("tasks", "pipeline", "train", "dp", "layers", "task"))
    assert not bad, f"{path.relative_to(PKG)} imports {bad}"
