"""The package's layers (README, "Layout"): each folder of ``sofo_lab/`` imports only the ones
below it, the engine (core, models, optim, tasks) never imports train, analysis or cli, and no
two modules import each other, imports inside functions included. Read from the source with
``ast``: nothing is imported. ``python tests/test_layers.py`` prints the import graph."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# where each installed package lives in the repository (pyproject.toml's package-dir)
PACKAGES = {"sofo_lab": ROOT / "sofo_lab", "sofo_lab.tasks": ROOT / "tasks", "sofo_lab.conf": ROOT / "conf"}

# A layer may import itself and the layers of a lower rank. ``sofo_lab`` is the package's
# __init__.py (the public names); ``library`` is sofo_lab/library.py.
RANK = {"conf": 0, "core": 0, "models": 1, "optim": 2, "tasks": 2, "library": 3,
        "train": 4, "analysis": 5, "cli": 6, "sofo_lab": 7}
ENGINE = {"core", "models", "optim", "tasks"}
SHELL = {"train", "analysis", "cli"}


def modules(packages: dict[str, Path] = PACKAGES) -> dict[str, Path]:
    """Every module, by its installed name."""
    found = {}
    for prefix, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _owner(name: str, known) -> str | None:
    """The module that ``name`` (a module, or a name inside one) is found in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path, known) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for every import of ours in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (owner := _owner(alias.name, known)) is not None:
                    out.append((owner, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package(name, path).split(".")
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if (owner := _owner(base, known)) is None:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in known:
                    out.append((full, None, node.lineno))
                else:
                    out.append((owner, alias.name if owner == base else None, node.lineno))
    return out


def defined(path: Path) -> set[str] | None:
    """The names a module binds at its top level; None when it can hand out any (``__getattr__``)."""
    names = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return None if "__getattr__" in names else names


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def graph(packages: dict[str, Path] = PACKAGES) -> dict[str, set[str]]:
    known = modules(packages)
    return {name: {target for target, _, _ in imports(name, path, known) if target != name}
            for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(packages: dict[str, Path] = PACKAGES) -> list[str]:
    """Every import that breaks the layering, or that takes a name its module does not define."""
    known = modules(packages)
    found = []
    for name, path in known.items():
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        mine = layer(name)
        if mine not in RANK:
            found.append(f"{where}: {name} is in no layer; put it in one of {sorted(RANK)}")
            continue
        for target, taken, line in imports(name, path, known):
            theirs = layer(target)
            if mine in ENGINE and theirs in SHELL:
                found.append(f"{where}:{line}: the engine ({mine}) imports {target} ({theirs})")
            elif theirs != mine and RANK.get(theirs, 99) >= RANK[mine]:
                found.append(f"{where}:{line}: {mine} imports {target}, a layer that is not below it")
            if taken is not None and (names := defined(known[target])) is not None and taken not in names:
                found.append(f"{where}:{line}: imports {taken} from {target}, which does not define it")
    return list(dict.fromkeys(found))


def test_layers_import_only_downwards():
    assert violations() == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_at_most_eight_modules_directly_in_the_package():
    assert len(list(PACKAGES["sofo_lab"].glob("*.py"))) <= 8


def test_the_check_catches_an_upward_import_and_a_cycle(tmp_path):
    """The guard can fail: an engine module importing the shell, a cycle hidden in functions,
    and a name that its module does not define."""
    pkg = tmp_path / "sofo_lab"
    for folder in ("core", "train", "analysis"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "system.py").write_text("def f():\n    from sofo_lab.train import runner\n")
    (pkg / "train" / "runner.py").write_text("from sofo_lab.core.system import f\nfrom . import rundir\n")
    (pkg / "train" / "rundir.py").write_text("def g():\n    from sofo_lab.train.runner import f\n")
    (pkg / "analysis" / "compare.py").write_text("from sofo_lab.train.runner import task_class\n")
    packages = {"sofo_lab": pkg}
    found = violations(packages)
    assert any("the engine (core) imports sofo_lab.train.runner" in v for v in found), found
    assert any("imports task_class from sofo_lab.train.runner" in v for v in found), found
    assert cycles(graph(packages)) == [["sofo_lab.core.system", "sofo_lab.train.rundir", "sofo_lab.train.runner"]]


if __name__ == "__main__":
    edges = graph()
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports between them, "
          f"{len(found := cycles(edges))} cycles")
    for component in found:
        print("  cycle:", " <-> ".join(component))
    for v in violations():
        print("  " + v)
