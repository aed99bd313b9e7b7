"""Measurement lives apart from the kernels: nothing in fused/kernels or the fused modules imports
fused.measure, and reading or writing a profile's table does not load matplotlib."""

import ast
import subprocess
import sys
from pathlib import Path

import fused

FUSED = Path(fused.__file__).resolve().parent
#: fused/ files that are tools on top of the package, not kernels or fused modules.
TOOLS = {"__main__.py", "cli.py", "teaching.py", "exercises.py"}


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, resolved to absolute names (``fused.measure.timing``)."""
    package = ".".join(path.relative_to(FUSED.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found += [module] + [f"{module}.{a.name}" for a in node.names]
    return found


def kernel_and_fused_modules() -> list[Path]:
    return [p for p in sorted(FUSED.glob("*.py")) if p.name not in TOOLS] + sorted((FUSED / "kernels").glob("*.py"))


def test_kernels_and_fused_modules_import_nothing_from_measure():
    files = kernel_and_fused_modules()
    assert any(p.name == "conv2d.py" for p in files) and any(p.name == "fuse.py" for p in files)
    offenders = {p.name: m for p in files for m in imported_modules(p)
                 if m == "fused.measure" or m.startswith("fused.measure.")}
    assert not offenders, offenders


def test_importing_fused_and_its_kernels_loads_no_measurement():
    code = (
        "import sys, importlib, pathlib, fused\n"
        "root = pathlib.Path(fused.__file__).parent\n"
        "for p in sorted(root.glob('*.py')) + sorted((root / 'kernels').glob('*.py')):\n"
        "    if p.stem not in ('__init__', '__main__', 'cli', 'teaching', 'teaching_plots'):\n"
        "        importlib.import_module('fused.' + ('kernels.' if p.parent.name == 'kernels' else '') + p.stem)\n"
        "print(sorted(m for m in sys.modules if m.startswith('fused.measure') or m.startswith('matplotlib')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=FUSED.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_profile_files_without_matplotlib(tmp_path):
    """Only the drawing modules (charts.py, and teaching_plots.py for the lessons) import
    matplotlib, and charts only when a chart is drawn."""
    code = (
        "import sys, fused.measure as M\n"
        "prof = M.Profile([M.Row(kind='total', path=M.TOTAL, block_type='m', ref_median_ms=1.0)], {'model': 'm'})\n"
        f"prof.write_json({str(tmp_path / 'p.json')!r}); prof.write_csv({str(tmp_path / 'p.csv')!r}); prof.table()\n"
        "assert not any(m.startswith('matplotlib') for m in sys.modules), 'matplotlib loaded'\n"
        "prof.chart()\n"
        "assert 'matplotlib' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=FUSED.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for path in FUSED.rglob("*.py"):
        if path.name not in ("charts.py", "teaching_plots.py"):
            assert not any(m.startswith("matplotlib") for m in imported_modules(path)), path


def test_no_module_is_over_700_lines():
    for path in [*FUSED.rglob("*.py"), *(FUSED.parent / "reference").glob("*.py")]:
        assert len(path.read_text().splitlines()) <= 700, path


def test_every_package_is_installed():
    """pyproject.toml lists its packages by hand: a new subpackage must be added there, or a
    non-editable install leaves it out."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((FUSED.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(FUSED.parent).parts)
             for root in ("fused", "reference") for p in (FUSED.parent / root).rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def module_name(path: Path) -> str:
    parts = path.relative_to(FUSED.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """The fused modules ``path`` imports anywhere (inside functions too), except under
    ``if TYPE_CHECKING:``; ``from pkg import name`` counts as importing ``pkg.name`` when that is a
    module, else ``pkg``. A module's own parent packages are left out (Python imports them first)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            for a in node.names:
                found.add(f"{module}.{a.name}" if f"{module}.{a.name}" in known else module)
    parents = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
    return {m for m in found if m in known and m != name and m not in parents}


def test_no_import_cycles():
    """No module of fused imports (directly or through others) a module that imports it back,
    counting imports inside functions: a cycle is a design knot even when it runs."""
    paths = {module_name(p): p for p in FUSED.rglob("*.py")}
    graph = {name: runtime_imports(path, set(paths)) for name, path in paths.items()}
    assert "fused.cli" in graph and "fused.measure.profiler" in graph["fused.cli"]
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
