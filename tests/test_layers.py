"""Imports run one way: no module of a lower layer imports a higher one (the layers are in warmer/__init__.py).

The check reads each module's source with `ast` (imports inside functions too); it runs none of them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "warmer"
_LAYER_LINE = re.compile(r"^- (\w+): (.+)$")


def declared_layers(package: Path) -> dict[str, int]:
    """{entry: rank} from the package docstring's `- layer: a.py, b/` lines, lowest layer first."""
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    ranks: dict[str, int] = {}
    for rank, match in enumerate(m for m in map(_LAYER_LINE.match, docstring.splitlines()) if m):
        for entry in match.group(2).split(","):
            ranks[entry.strip().removesuffix("/").removesuffix(".py")] = rank
    return ranks


def imported_modules(source: str, package_name: str) -> set[str]:
    """Dotted names of what `source` imports from `package_name`, at any depth of the module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == package_name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package_name:
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def entry_of(dotted: str, package: Path) -> str:
    """The layer entry a dotted name under the package belongs to: its top folder or top-level module."""
    parts = dotted.split(".")[1:]
    if not parts or not ((package / parts[0]).is_dir() or (package / f"{parts[0]}.py").is_file()):
        return "__init__"
    return parts[0]


def upward_imports(package: Path) -> list[str]:
    """One line per import that runs from a lower layer to a higher one, and per module no layer names."""
    ranks = declared_layers(package)
    problems = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        entry = relative.parts[0].removesuffix(".py")
        if entry not in ranks:
            problems.append(f"{relative}: in no layer of {package.name}/__init__.py")
            continue
        for dotted in sorted(imported_modules(path.read_text(), package.name)):
            target = entry_of(dotted, package)
            if ranks.get(target, -1) > ranks[entry]:
                problems.append(f"{relative} imports {dotted}: {entry} is below {target}")
    return problems


def test_every_module_is_in_a_layer_and_imports_only_its_own_layer_and_those_below() -> None:
    ranks = declared_layers(PACKAGE)
    assert {"values", "cache", "pipeline", "cli"} <= ranks.keys()
    assert ranks["values"] < ranks["cache"] < ranks["pipeline"] < ranks["cli"]
    assert upward_imports(PACKAGE) == []


def test_the_check_finds_an_upward_import_even_inside_a_function(tmp_path: Path) -> None:
    package = tmp_path / "warmer"
    (package / "values").mkdir(parents=True)
    (package / "cli").mkdir()
    (package / "__init__.py").write_text('"""Layers.\n\n- values: __init__.py, values/\n- commands: cli/\n"""\n')
    (package / "cli" / "main.py").write_text("from warmer.values.targets import Target\n")
    (package / "values" / "targets.py").write_text("def f():\n    from warmer.cli import main\n")
    (package / "stray.py").write_text("")
    assert upward_imports(package) == [
        "stray.py: in no layer of warmer/__init__.py",
        "values/targets.py imports warmer.cli.main: values is below cli",
    ]
