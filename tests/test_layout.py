"""The layout of the package (docs/layout.md): the method in the package root, each application in
a package of its own, the core never importing an application, no import cycles, short files, and
a build that ships every package."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The application packages (and the adapters, which import frameworks): the core imports none.
APPLICATIONS = ("tiec.generate", "tiec.bench", "tiec.calibrate", "tiec.cli", "tiec.demo", "tiec.adapters")
#: Modules in the package root that are not the method: ``python -m tiec`` (the command line's
#: entry point) and deprecated aliases of moved modules.
NOT_CORE = {"tiec.__main__", "tiec.metrics"}
MAX_LINES = 400


def module_files() -> dict[str, Path]:
    """Every module of the installed package, by its dotted name (``adapters/`` is ``tiec.adapters``)."""
    modules = {}
    for top, folder in (("tiec", ROOT / "tiec"), ("tiec.adapters", ROOT / "adapters")):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((top, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def core_modules() -> list[str]:
    """The modules of the method: the package root's modules, less :data:`NOT_CORE`."""
    return sorted(name for name, path in module_files().items()
                  if path.parent == ROOT / "tiec" and name not in NOT_CORE)


def imported(name: str, source: str, *, is_package: bool) -> set[str]:
    """The absolute names a module imports anywhere in it (inside functions too), as written:
    ``from .x import y`` gives ``pkg.x.y`` and ``pkg.x`` (``y`` may be a module or a name)."""
    package = name if is_package else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def application_imports(name: str, source: str, *, is_package: bool = False) -> list[str]:
    """What a core module imports from an application package: must be empty."""
    return sorted(target for target in imported(name, source, is_package=is_package)
                  if any(target == app or target.startswith(app + ".") for app in APPLICATIONS))


def test_the_rule_catches_an_application_import():
    """The check below can fail: relative, absolute and lazy imports of an application are found."""
    assert application_imports("tiec.loop", "from .bench.metrics import psnr\n") == ["tiec.bench.metrics",
                                                                                       "tiec.bench.metrics.psnr"]
    assert application_imports("tiec.loop", "def f():\n    import tiec.cli\n") == ["tiec.cli"]
    assert application_imports("tiec.loop", "from . import generate\n") == ["tiec.generate"]
    assert application_imports("tiec", "from .calibrate import calibrate\n", is_package=True) == [
        "tiec.calibrate", "tiec.calibrate.calibrate"]
    assert application_imports("tiec.loop", "from .cache import EncoderCache\nimport torch\n") == []


@pytest.mark.parametrize("name", core_modules())
def test_the_core_never_imports_an_application(name):
    path = module_files()[name]
    found = application_imports(name, path.read_text(), is_package=path.name == "__init__.py")
    assert not found, f"{path.relative_to(ROOT)} (the method) imports {found}; move that code into an application"


def test_every_core_module_imports_with_the_applications_blocked():
    """At run time too: with the application packages made unimportable, ``import tiec`` and each
    core module still import."""
    code = (
        "import importlib, importlib.abc, sys\n"
        f"BLOCKED = {APPLICATIONS!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if any(name == b or name.startswith(b + '.') for b in BLOCKED):\n"
        "            raise ImportError(f'{name} is an application; the core must not import it')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for name in {core_modules()!r}:\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (lazy imports included)."""
    files = module_files()
    graph = {}
    for name, path in files.items():
        targets = imported(name, path.read_text(), is_package=path.name == "__init__.py")
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path ``[a, b, ..., a]``, or ``[]``.

    Examples:
        >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})
        ['a', 'b', 'c', 'a']
        >>> find_cycle({"a": {"b"}, "b": set()})
        []
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_import_cycles():
    assert find_cycle(import_graph()) == []


def test_applications_live_in_packages_of_their_own():
    """The package root holds the method; generate, bench, calibrate and the command line are packages."""
    for app in ("generate", "bench", "calibrate", "cli"):
        assert (ROOT / "tiec" / app / "__init__.py").is_file()
    root_modules = {path.stem for path in (ROOT / "tiec").glob("*.py")}
    assert not root_modules & {"bench", "calibrate", "cli", "_generate", "_store", "_processes", "_peers"}


def test_no_file_is_longer_than_the_limit_unless_it_says_why():
    """Python files of the project over 400 lines must say why in their docstring."""
    too_long = []
    for folder in ("tiec", "adapters", "tests", "docs", "examples", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            lines = path.read_text().count("\n")
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            if lines > MAX_LINES and f"longer than {MAX_LINES} lines because" not in docstring:
                too_long.append(f"{path.relative_to(ROOT)}: {lines}")
    assert not too_long


def test_the_build_ships_every_package():
    """pyproject.toml lists its packages by hand (adapters/ is mapped to tiec.adapters): none missing."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in module_files().items() if path.name == "__init__.py"}
    assert listed == on_disk


def test_the_moved_metrics_module_still_imports_with_a_warning():
    sys.modules.pop("tiec.metrics", None)
    with pytest.warns(DeprecationWarning, match="tiec.bench.metrics"):
        import tiec.metrics as old
    from tiec.bench import metrics

    assert old.psnr is metrics.psnr and old.PeakMemory is metrics.PeakMemory


def test_public_paths_the_docs_show_keep_working():
    """Names the docs and older releases import from the application packages."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from tiec.bench import Method, bench_demo, bench_speed, combine  # noqa: F401
        from tiec.calibrate import Candidate, calibrate, pareto_front  # noqa: F401
        from tiec.cli import main  # noqa: F401
