"""The package layout is the design (docs/design.md §6): imports only point down the layers."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "editscale"
# What each part may import from the package (besides itself). Leaves import nothing from it.
ALLOWED = {
    "settings": set(), "artifacts": set(), "paths": set(),
    "algorithms": set(),  # pure: tensors in, ΔW out
    "models": {"artifacts", "paths"},
    "data": {"artifacts", "paths"},
    "editing": {"algorithms", "models", "data", "settings", "artifacts", "paths"},  # data: C's corpus
    "evaluation": {"models", "data", "paths", "settings"},
    "workflow": {"algorithms", "models", "data", "editing", "evaluation", "settings", "artifacts", "paths"},
    # The library's front door and its command line: the layers below, never the other way, and
    # never the workflow (orchestration stands on the library, not the library on it).
    "editor": {"algorithms", "models", "data", "editing", "evaluation", "settings", "artifacts", "paths"},
    "__main__": {"editor", "models", "settings"},
}


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within its own part, unless it climbs out
                if node.level > (2 if len(path.relative_to(PACKAGE).parts) > 1 else 1):
                    found.add(node.module.split(".")[0] if node.module else "?")
                continue
            module = node.module or ""
            if module == "editscale":
                found |= {alias.name for alias in node.names}
            elif module.startswith("editscale."):
                found.add(module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("editscale.")}
    return found


def test_every_import_points_down_the_layers():
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE]
    assert len(modules) > 20
    wrong = []
    for path in modules:
        part = part_of(path)
        for target in imported_parts(path) - {part}:
            if target not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not wrong, wrong


def test_every_part_is_a_declared_layer():
    parts = {part_of(p) for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py"}
    assert parts == set(ALLOWED)
