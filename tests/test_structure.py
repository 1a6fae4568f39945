"""The package's modules import one another without cycles.

Every import statement counts, wherever it is: at the top, inside a
function (run later, but still a dependency), under ``if TYPE_CHECKING:``
(the type checker follows it), and ``importlib.import_module()`` of a
literal name.  A module depends on the package it imports from only
through the modules it names; the implicit import of a parent package
(``reconnecting.testing/__init__.py`` before ``reconnecting.testing.x``)
is not counted.
"""

import ast
from pathlib import Path

import pytest

import reconnecting


def modules(package_dir):
    """Map each module's dotted name to its file, for the package in *package_dir*."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported_names(name, path):
    """Every dotted name module *name* imports, absolute, wherever the import is."""
    tree = ast.parse(path.read_text(), str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y, from .. import z
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, *filter(None, [base])])
            yield base
            # "from package import module" imports a module too.
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and called(node) == "import_module":
            # importlib.import_module("a.b"); a computed name cannot be known.
            if node.args and isinstance(node.args[0], ast.Constant):
                yield str(node.args[0].value)


def called(call):
    """The name of the function *call* calls: ``f`` in ``f()`` or ``m.f()``."""
    return getattr(call.func, "attr", None) or getattr(call.func, "id", None)


def import_graph(package_dir):
    """Which of the package's modules each of its modules imports."""
    found = modules(package_dir)
    return {
        name: {t for t in imported_names(name, path) if t in found and t != name}
        for name, path in found.items()
    }


def cycles(graph):
    """Every elementary cycle of *graph*, as a tuple of modules in import
    order, starting with the alphabetically first."""
    found = set()
    for start in sorted(graph):
        paths = [(start,)]
        while paths:
            path = paths.pop()
            for following in graph[path[-1]]:
                if following == start:
                    found.add(path)
                elif following > start and following not in path:
                    paths.append((*path, following))
    return found


def test_the_package_has_no_import_cycle():
    package_dir = Path(reconnecting.__file__).parent
    assert sorted(cycles(import_graph(package_dir))) == []


@pytest.fixture
def package(tmp_path):
    """A package whose modules import each other in every counted way."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg import b\n",  # at call time
        "b.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .a import f\n",
        "c.py": "import importlib\nimportlib.import_module('pkg.sub.d')\n",
        "sub/__init__.py": "from .. import c\n",
        "sub/d.py": "import pkg.sub\n",
        "e.py": "import pkg.a\nimport os\n",  # imports, not imported
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_every_kind_of_import_counts(package):
    graph = import_graph(package)
    assert graph["pkg.e"] == {"pkg.a"}
    assert cycles(graph) == {
        ("pkg.a", "pkg.b"),
        ("pkg.c", "pkg.sub.d", "pkg.sub"),
    }


# Modules whose private imports are not checked yet: reconnecting.testing's
# fixtures import helpers of one another (_free_port, _tail, _name), and
# are being reorganised apart from the core.
def private_imports(name, path, found):
    """The underscore names module *name* imports from the package's other
    modules (``from m import _x``, or ``m._x`` after ``import m``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    imported_modules = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, *filter(None, [base])])
            if base not in found or base == name:
                continue
            for alias in node.names:
                if private(alias.name) and f"{base}.{alias.name}" not in found:
                    yield f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in found and alias.asname:
                    imported_modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in imported_modules
            and private(node.attr)
        ):
            yield f"{imported_modules[node.value.id]}.{node.attr}"


def private(name):
    return name.startswith("_") and not name.startswith("__")


def all_private_imports(package_dir):
    found = modules(package_dir)
    return {
        name: sorted(set(private_imports(name, path, found)))
        for name, path in found.items()
    }


def test_no_module_imports_another_modules_private_names():
    package_dir = Path(reconnecting.__file__).parent
    assert {
        name: names for name, names in all_private_imports(package_dir).items() if names
    } == {}


def test_a_private_import_is_found(package):
    (package / "f.py").write_text(
        "from .a import _hidden, f\nfrom . import sub as s\nimport pkg.b as b\n"
        "b._inside\n"
    )
    assert all_private_imports(package)["pkg.f"] == ["pkg.a._hidden", "pkg.b._inside"]
