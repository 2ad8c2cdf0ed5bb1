"""The house rules of the code base (issue 8), checked statically on every CI run.

Fast and service-free: grimp reads the source and imports none of it.

What counts as an import: grimp records every ``import`` statement, at module level *and*
inside functions. Both count here. An import inside a function only postpones a circle to
run time; the two modules still need each other, and the circle is what makes a module
impossible to read, test or move alone. Imports under ``if TYPE_CHECKING:`` are left out
(they never run). The cycle tests say for each edge whether it is a module-level import
(a circle through those alone breaks ``import``) or one inside a function.

Failures name every offender: the modules of each circle with file and line of each import,
the import chain from a plain module to Celery, the functions over the length limit.
"""

from __future__ import annotations

import ast
from collections import deque
from functools import cache
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("worker", "schemas")

#: May import Celery (or kombu) themselves: the app factory, the worker's app, the tasks, the
#: embedded broker's transport.
CELERY_MODULES = frozenset({"worker.messaging.celery_app", "worker.messaging.celery_worker",
                            "worker.messaging.tasks", "worker.messaging.filesystem_transport",
                            "worker.messaging.prefork_pool", "worker.messaging.beat_lease"})
#: Entry points and edge adapters that wire the Celery layer to the outside world (the
#: command line, the process supervisor, the client API, the hospital doors): they may reach
#: Celery through the modules above, never import it themselves.
CELERY_EDGES = frozenset({"worker.__main__", "worker.process.service", "worker.client", "worker.cli.status"})
CELERY_EDGE_PACKAGES = ("worker.doors",)
#: Third-party packages the data contract must never pull in.
NOT_IN_SCHEMAS = ("tensorflow", "keras", "celery", "kombu", "sqlalchemy", "alembic")
#: Longer than this, a function must say why in its docstring ("long because ...").
MAX_FUNCTION_LINES = 80
FORBIDDEN_MODULE_NAMES = {"utils", "util", "helpers", "helper", "common", "misc"}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=True,
                             exclude_type_checking_imports=True, cache_dir=None)


def _source_file(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@cache
def _function_import_lines(path: Path) -> frozenset[int]:
    """Line numbers of the import statements inside a function body of ``path``."""
    lines: set[int] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                lines.add(child.lineno)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text(), str(path)), False)
    return frozenset(lines)


def _internal(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def _edge_text(graph: grimp.ImportGraph, importer: str, imported: str) -> str:
    """``a -> b (a.py:12, in a function)`` for the first import of ``b`` in ``a``."""
    details = sorted(graph.get_import_details(importer=importer, imported=imported),
                     key=lambda d: d["line_number"])
    if not details:
        return f"{importer} -> {imported}"
    path = _source_file(importer)
    line = details[0]["line_number"]
    where = "in a function" if line in _function_import_lines(path) else "module level"
    return f"{importer} -> {imported} ({path.relative_to(ROOT)}:{line}, {where})"


def _module_level(graph: grimp.ImportGraph, importer: str, imported: str) -> bool:
    lazy = _function_import_lines(_source_file(importer))
    return any(d["line_number"] not in lazy
               for d in graph.get_import_details(importer=importer, imported=imported))


def _edges(graph: grimp.ImportGraph, module_level_only: bool) -> dict[str, set[str]]:
    internal = sorted(m for m in graph.modules if _internal(m))
    edges: dict[str, set[str]] = {m: set() for m in internal}
    for importer in internal:
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported in edges and imported != importer and (
                    not module_level_only or _module_level(graph, importer, imported)):
                edges[importer].add(imported)
    return edges


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return sorted(found)


def _shortest_cycle(edges: dict[str, set[str]], members: list[str]) -> list[str]:
    """The shortest circle through the first module of a component (BFS back to it)."""
    start, inside = members[0], set(members)
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(edges[v] & inside):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if w not in previous:
                previous[w] = v
                queue.append(w)
    return members  # unreachable for a strongly connected component


def _cycle_report(graph: grimp.ImportGraph, module_level_only: bool) -> list[str]:
    edges = _edges(graph, module_level_only)
    report = []
    for members in _strongly_connected(edges):
        cycle = _shortest_cycle(edges, members)
        steps = "\n      ".join(_edge_text(graph, a, b) for a, b in zip(cycle, cycle[1:]))
        report.append(f"circle among {', '.join(members)}:\n      {steps}")
    return report


def test_no_import_cycles_at_import_time(graph):
    """Module-level imports alone: a circle here breaks ``import`` in some orders."""
    report = _cycle_report(graph, module_level_only=True)
    assert not report, "module-level import circles:\n  " + "\n  ".join(report)


def test_no_module_imports_another_that_imports_it_back(graph):
    """Every import, inside functions too."""
    report = _cycle_report(graph, module_level_only=False)
    assert not report, "import circles (some closed inside functions):\n  " + "\n  ".join(report)


def _chain_text(graph: grimp.ImportGraph, chain: tuple[str, ...] | None) -> str:
    return "\n      ".join(_edge_text(graph, a, b) for a, b in zip(chain, chain[1:])) if chain else ""


def _is_edge(module: str) -> bool:
    """An edge that may reach Celery: listed above, a door, or a command-line module
    (the ``worker.cli`` package, every ``*.cli``)."""
    return (module in CELERY_EDGES or module.rsplit(".", 1)[-1] == "cli"
            or module == "worker.cli" or module.startswith("worker.cli.")
            or any(module == p or module.startswith(p + ".") for p in CELERY_EDGE_PACKAGES))


def test_only_the_celery_modules_import_celery(graph):
    direct = set()
    for package in ("celery", "kombu"):
        if package in graph.modules:
            direct |= {m for m in graph.find_modules_that_directly_import(package) if _internal(m)}
    stray = sorted(direct - CELERY_MODULES)
    assert not stray, "modules that import Celery/kombu themselves (only " \
        f"{sorted(CELERY_MODULES)} may): " + ", ".join(
            _edge_text(graph, m, p) for m in stray for p in ("celery", "kombu")
            if p in graph.modules and graph.direct_import_exists(importer=m, imported=p))


def test_plain_modules_never_reach_celery(graph):
    """Decoding, inference, reports, the database, intake, training, retraining, settings:
    no import chain to Celery at all (they take a ``send`` function instead of the app)."""
    if "celery" not in graph.modules:
        pytest.skip("nothing imports Celery")
    offenders = []
    for module in sorted(m for m in graph.modules if _internal(m)):
        if module in CELERY_MODULES or _is_edge(module):
            continue
        chain = graph.find_shortest_chain(importer=module, imported="celery")
        if chain:
            offenders.append(f"{module}:\n      {_chain_text(graph, chain)}")
    assert not offenders, "plain modules with an import chain to Celery:\n  " + "\n  ".join(offenders)


def test_schemas_import_nothing_of_ours_and_no_heavy_package(graph):
    problems = []
    for module in sorted(m for m in graph.modules if m.split(".")[0] == "schemas"):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported.split(".")[0] in ("worker", "migrations", "model_store"):
                problems.append(_edge_text(graph, module, imported))
        for package in NOT_IN_SCHEMAS:
            if package in graph.modules:
                chain = graph.find_shortest_chain(importer=module, imported=package)
                if chain:
                    problems.append(_chain_text(graph, chain))
    assert not problems, "schemas must stay importable alone:\n  " + "\n  ".join(problems)


def _python_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _long_functions(path: Path, root: Path = ROOT) -> list[str]:
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = child.end_lineno - child.lineno + 1
                reason = (ast.get_docstring(child) or "").lower()
                if length > MAX_FUNCTION_LINES and "long because" not in reason:
                    found.append(f"{path.relative_to(root)}:{child.lineno} {name}() is {length} lines")
            visit(child, f"{name}." if name != prefix else prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return found


def test_no_function_over_80_lines_without_a_reason():
    """Longer than 80 lines (``def`` to last line) only with "long because ..." in the docstring."""
    offenders = [line for path in _python_files() for line in _long_functions(path)]
    assert not offenders, (f"functions over {MAX_FUNCTION_LINES} lines whose docstring gives no "
                           "reason ('long because ...'):\n  " + "\n  ".join(offenders))


def test_module_names_say_what_they_hold():
    vague = [str(p.relative_to(ROOT)) for p in _python_files() if p.stem in FORBIDDEN_MODULE_NAMES]
    assert not vague, f"grab-bag module names: {vague}"


def test_the_length_check_counts_what_it_should(tmp_path):
    """The checker itself: a long function is found, a reasoned one and a short one are not."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "m.py"
    path.write_text(f"def long():\n{body}\n\n"
                    f"def reasoned():\n    '''Long because: one table.'''\n{body}\n\n"
                    "class K:\n    def short(self):\n        return 1\n")
    assert _long_functions(path, root=tmp_path) == [f"m.py:1 long() is {MAX_FUNCTION_LINES + 1} lines"]


def test_the_cycle_finder_names_the_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _strongly_connected(edges) == [["a", "b", "c"]]
    assert _shortest_cycle(edges, ["a", "b", "c"]) == ["a", "b", "c", "a"]


#: Foundations never import the layers built on them (issue 18): the model store holds files
#: and pointers, the database layer rows; neither knows the classifier, the doors, the jobs,
#: the Celery layer or the process tree that use them.
LOWER_LAYERS = ("worker.store", "worker.db", "worker.imaging")
HIGHER_LAYERS = ("worker.classify", "worker.training", "worker.retrain", "worker.calibration",
                 "worker.doors", "worker.jobs", "worker.messaging", "worker.process", "worker.cli",
                 "worker.intake", "worker.report", "worker.results")


def test_lower_layers_never_import_higher_ones(graph):
    def within(module: str, packages: tuple[str, ...]) -> bool:
        return any(module == p or module.startswith(p + ".") for p in packages)

    upward = sorted(
        (importer, imported)
        for importer in graph.modules if within(importer, LOWER_LAYERS)
        for imported in graph.find_modules_directly_imported_by(importer)
        if within(imported, HIGHER_LAYERS))
    assert not upward, "imports from a lower layer up: " + ", ".join(
        _edge_text(graph, a, b) for a, b in upward)


def test_the_top_of_worker_holds_only_foundations_and_entry_points():
    loose = sorted(p.stem for p in (ROOT / "worker").glob("*.py"))
    assert loose == ["__init__", "__main__", "client", "durable", "errors", "settings"], loose
