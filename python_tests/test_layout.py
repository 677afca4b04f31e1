"""The package's shape (DESIGN.md): a stage imports only the stages above it in the flow, so that importing the
model never pulls in training, and serving never pulls in experiments."""

from __future__ import annotations

import ast
from pathlib import Path

import genrec_ext

PACKAGE = Path(genrec_ext.__file__).resolve().parent
#: DESIGN.md's flow, top first; the top-level entry points (cli, demo, experiments, serve) may import anything
STAGES = ["ops", "data", "sid", "nn", "model", "decoding", "reward", "train", "eval", "baselines", "hf"]
SHARED = {"_config", "_io", "_C", "__init__"}


def _stage(parts: tuple[str, ...]) -> str | None:
    return parts[0] if parts and parts[0] in STAGES else None


def _imports(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(line, genrec_ext-relative module path) of every import in a module, those inside functions too."""
    module = path.relative_to(PACKAGE).with_suffix("").parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module[: len(module) - node.level]
                target = base + tuple(node.module.split(".")) if node.module else base
            elif node.module and node.module.split(".")[0] == "genrec_ext":
                target = tuple(node.module.split(".")[1:])
            else:
                continue
            names = [target + (a.name,) for a in node.names] if not node.module else [target]
            found += [(node.lineno, t) for t in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, tuple(a.name.split(".")[1:])) for a in node.names
                      if a.name.split(".")[0] == "genrec_ext"]
    return found


def test_no_stage_imports_a_stage_below_it():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _stage(path.relative_to(PACKAGE).parts)
        if own is None:
            continue
        for line, target in _imports(path):
            other = _stage(target)
            if other is not None and STAGES.index(other) > STAGES.index(own):
                violations.append(f"{path.relative_to(PACKAGE)}:{line} ({own}) imports {'.'.join(target)} ({other})")
            elif other is None and target and target[0] not in SHARED:
                violations.append(f"{path.relative_to(PACKAGE)}:{line} ({own}) imports the entry point {target[0]}")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_relative_imports():
    sample = PACKAGE / "decoding" / "beam_search.py"
    targets = {t for _, t in _imports(sample)}
    assert ("model",) in targets and ("sid",) in targets  # `from ..model import ...`, `from ..sid import ...`
