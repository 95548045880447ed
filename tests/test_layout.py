"""Package structure: no import cycles, library modules never import a command module, and no module imports
another module's private names (read with ast, lazy imports inside functions included)."""
import ast
from pathlib import Path

import cgdml

PACKAGE = Path(cgdml.__file__).parent


def modules():
    """{dotted name: parsed tree} of every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text()))
    return out


def is_command(name, tree):
    """A command runs as ``python -m``: it has an ``if __name__ == "__main__"`` block or is a ``__main__``."""
    return name.endswith(".__main__") or any(
        isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
        and getattr(node.test.left, "id", "") == "__name__" for node in ast.walk(tree))


def imports(name, path, tree, known):
    """[(imported module, [imported names])] of module ``name``, package-internal only."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            names = [a.name for a in node.names]
            for n in names:  # "from . import kernels" imports a module
                if f"{target}.{n}" in known:
                    found.append((f"{target}.{n}", []))
            if target in known:
                found.append((target, [n for n in names if f"{target}.{n}" not in known]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name in known]
    return [(t, n) for t, n in found if t != name and t != "cgdml"]


def test_no_cycles_no_library_to_command_imports_no_private_names():
    mods = modules()
    graph = {name: imports(name, path, tree, mods) for name, (path, tree) in mods.items()}
    commands = {name for name, (_, tree) in mods.items() if is_command(name, tree)}
    assert {"cgdml.map", "cgdml.fit", "cgdml.simulate.__main__", "cgdml.fes.__main__", "cgdml.reference.__main__"} \
        <= commands
    bad = [f"{m} imports command {t}" for m, deps in graph.items() if m not in commands
           for t, _ in deps if t in commands]
    bad += [f"{m} imports private {t}.{n}" for m, deps in graph.items() for t, names in deps for n in names
            if n.startswith("_") and n != "__version__"]
    # cycles: depth-first search over module -> module edges
    edges = {m: {t for t, _ in deps} for m, deps in graph.items()}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                bad.append("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not bad, "\n".join(bad)


def test_command_modules_are_thin():
    """Commands parse arguments and call the library: each stays well under the size of a library module."""
    for name, (path, tree) in modules().items():
        if is_command(name, tree):
            assert len(path.read_text().splitlines()) < 260, f"{name} has grown into a library module"


def test_cg_pdb_text_is_read_in_one_place_and_mapping_needs_no_reference():
    """cgdml.system alone parses CG PDB text (datasets and models pass a CGSystem on), and the map presets read
    their alanine-dipeptide PDB from package data, not from cgdml.reference."""
    mods = modules()
    readers = sorted(name for name, (path, _) in mods.items() if "load_pdb(" in path.read_text())
    assert readers == ["cgdml.system"], readers
    path, tree = mods["cgdml.mapping"]
    assert "cgdml.reference" not in {t for t, _ in imports("cgdml.mapping", path, tree, mods)}
