"""Imports run one way: no cycle among raytower's modules or among its floors, each floor imports
only the floors below it, and the core imports no Ray.

Read from the source, every import statement, those inside functions too: an import that runs on
one path only still ties the two modules together. What an import runs counts as well:
``import raytower.a.b`` runs ``raytower/a/__init__.py`` first, so importing a module also imports
the module-level code of the packages it lies in, unless the importer lies in them too (then that
``__init__`` is already running). A name read from a package itself (``from raytower.data import
Bundle``, ``import raytower.data``) may run its lazy ``__getattr__``, so it counts every import in
that ``__init__``, the modules of its lazy-names table (``_HOME``) included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Where each package's source lies (pyproject.toml's package-dir): the trainables and the spaces
# live at the repository's top level and install inside raytower.
SOURCES = {"raytower": REPO / "raytower", "raytower.trainables": REPO / "trainables",
           "raytower.search_spaces": REPO / "search_spaces"}
INIT = ":init"  # a package's __init__ as importing one of its modules runs it: its module-level code

# raytower's floors, bottom up (docs/design.md): a module imports its own floor and those below.
FLOORS = ("foundation", "data", "model", "train", "trial", "trainables", "tune", "top")
SUBPACKAGES = {"data": "data", "model": "model", "train": "train", "trainables": "trainables", "tune": "tune",
               "search_spaces": "tune", "report": "top"}
TOP = {"raytower.api", "raytower.cli", "raytower._flags", "raytower._hints", "raytower.export", "raytower.report", "raytower.submit"}
TRIAL = {"raytower._trial"}  # what a trial is handed: below the search and its trainable alike
CORE = FLOORS[:FLOORS.index("trainables")]  # plain PyTorch (numpy, pandas, pyarrow for data)


def modules(sources: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Every module's dotted name -> (its file, whether it is a package's __init__)."""
    found = {}
    for package, root in sources.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join([package, *(parts[:-1] if is_package else parts)])] = (path, is_package)
    return found


def packages_of(name: str) -> list[str]:
    """The packages whose __init__ importing ``name`` runs first: raytower.a.b -> raytower, raytower.a."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(sources: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules (and ``package:init`` nodes) importing it runs, imports in functions included."""
    mods = modules(sources)
    top = next(iter(sources)).split(".")[0]
    graph = {}
    for name, (path, is_package) in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = _targets(name, is_package, ast.walk(tree), mods, top)
        if is_package:
            graph[name] |= {name + INIT} | _lazy_names(name, tree, mods)
            graph[name + INIT] = _targets(name, is_package, _run_on_import(tree), mods, top)
        graph[name].discard(name)
    return graph


def _run_on_import(tree: ast.Module):
    """The nodes of a module's code that runs when it is imported: all but function bodies."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def _targets(name: str, is_package: bool, nodes, mods: dict, top: str) -> set[str]:
    running = set(packages_of(name)) | ({name} if is_package else set())  # their __init__ runs already
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            wanted = [(a.name, True) for a in node.names]  # (module, whether names are read from it)
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".")[:len(name.split(".")) - node.level + (1 if is_package else 0)] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in mods]
            wanted = [(s, True) for s in subs] + [(module, len(subs) < len(node.names))]
        else:
            continue
        for module, whole in wanted:
            if module.split(".")[0] != top:
                continue
            out |= {p + INIT for p in packages_of(module) if p not in running}
            if whole:
                out.add(module)
            elif module not in running:
                out.add(module + INIT)
    return {t for t in out if t.split(":")[0] in mods}


def _lazy_names(package: str, tree: ast.Module, mods: dict) -> set[str]:
    """The modules a package's ``__getattr__`` imports by name (importlib) from its ``_HOME`` table."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_HOME" for t in node.targets):
            homes = {m if m in mods else f"{package}.{m}" for m in ast.literal_eval(node.value).values()}
            assert homes <= set(mods), f"{package}._HOME names modules that do not exist: {homes - set(mods)}"
            return homes
    dynamic = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "import_module"]
    assert not dynamic, f"{package}/__init__.py imports by name without a _HOME table this test can read"
    return set()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def floor_of(node: str) -> str:
    name, _, init = node.partition(":")
    parts = name.split(".")
    if name == "raytower":  # its module-level code imports the foundation; its lazy names are the API
        return "foundation" if init else "top"
    if parts[1] in SUBPACKAGES:
        return SUBPACKAGES[parts[1]]
    head = ".".join(parts[:2])  # raytower.report for raytower.report.figures too
    return "top" if head in TOP else "trial" if head in TRIAL else "foundation"


@pytest.fixture(scope="module")
def graph():
    return import_graph(SOURCES)


def test_no_module_imports_one_that_imports_it_back(graph):
    found = cycles(graph)
    assert not found, "an import cycle among these modules:\n" + "\n".join(map(" ".join, found))


def test_no_floor_imports_one_that_imports_it_back(graph):
    floors = {}
    for a, targets in graph.items():
        floors.setdefault(floor_of(a), set()).update(floor_of(b) for b in targets if floor_of(b) != floor_of(a))
    found = cycles(floors)
    assert not found, f"floors that import each other: {found}"


@pytest.mark.parametrize("floor", FLOORS)
def test_a_floor_imports_only_itself_and_the_floors_below(graph, floor):
    up = sorted(f"{a} -> {b} ({floor_of(b)})" for a, targets in graph.items() if floor_of(a) == floor
                for b in targets if FLOORS.index(floor_of(b)) > FLOORS.index(floor))
    assert not up, f"{floor} imports a floor above it:\n" + "\n".join(up)


def test_the_core_imports_no_ray_and_no_optuna():
    core = {name: path for name, (path, _) in modules(SOURCES).items() if floor_of(name) in CORE}
    assert {"raytower.data._bundle", "raytower.model.build", "raytower.train.loop", "raytower._trial"} <= set(core)
    found = []
    for name, path in core.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{name}: {n}" for n in names if n.split(".")[0] in ("ray", "optuna")]
    assert not found, "the core imports Ray or Optuna:\n" + "\n".join(found)


def test_the_floors_cover_every_module(graph):
    nodes = set(graph) | {b for targets in graph.values() for b in targets}
    assert {floor_of(n) for n in nodes} == set(FLOORS)
    assert floor_of("raytower.trainables.curriculum") == "trainables" and floor_of("raytower.metrics") == "foundation"


def _package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return {"pkg": root / "pkg"}


def test_the_reader_counts_imports_in_functions_and_the_inits_they_run(tmp_path):
    # pkg.high imports pkg.low.x inside a function; that runs pkg/low/__init__, which imports pkg.high
    files = {"pkg/__init__.py": "", "pkg/low/x.py": "y = 1\n", "pkg/low/__init__.py": "from pkg.high import f\n",
             "pkg/high.py": "def f():\n    from pkg.low.x import y\n"}
    assert cycles(import_graph(_package(tmp_path / "a", files))) == [["pkg.high", "pkg.low:init"]]
    # the same with a lazy __init__: only reading a name from pkg.low itself runs its imports
    lazy = {**files, "pkg/low/__init__.py": "def __getattr__(name):\n    from pkg.high import f\n    return f\n"}
    assert cycles(import_graph(_package(tmp_path / "b", lazy))) == []
    reads = {**lazy, "pkg/high.py": "def f():\n    from pkg.low import y\n"}
    assert cycles(import_graph(_package(tmp_path / "c", reads))) == [["pkg.high", "pkg.low"]]
    # a package's own modules do not run its __init__ again: a re-exporting __init__ is no cycle
    own = {"pkg/__init__.py": "from pkg.a import z\n", "pkg/a.py": "from pkg.b import w\nz = w\n", "pkg/b.py": "w = 1\n"}
    assert cycles(import_graph(_package(tmp_path / "d", own))) == []
