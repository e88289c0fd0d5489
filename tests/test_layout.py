"""The package's shape: small modules, and imports that only run one way (no cycle), read from the
source with ``ast`` so that a lazy import inside a function counts too."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "darts_fast"
MAX_LINES = 300


def _modules():
    """{dotted name: path} of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


# setup.py's compiled extension: a module without package imports (it may not be built yet).
COMPILED = {"darts_fast._C"}


def _imports(name, path, modules):
    """The package modules that module ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.add(child if child in modules else base)
    return {t for t in targets if t in modules and t != name}


def test_no_module_is_over_300_lines():
    """The library's modules and the benchmarks' (the tests are not held to it)."""
    paths = [*_modules().values(), *sorted((PACKAGE.parent / "benchmarks").glob("*.py"))]
    long = {str(path.relative_to(PACKAGE.parent)): n for path in paths
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, {*modules, *COMPILED}) for name, path in modules.items()}
    graph.update({name: set() for name in COMPILED})
    # Tarjan's strongly connected components: a component of more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_check_sees_a_cycle(tmp_path):
    """The graph reading resolves relative imports: two modules importing each other form one
    component."""
    modules = {"darts_fast.a": tmp_path / "a.py", "darts_fast.b": tmp_path / "b.py"}
    modules["darts_fast.a"].write_text("from .b import x\n")
    modules["darts_fast.b"].write_text("def f():\n    from . import a\n")
    assert _imports("darts_fast.a", modules["darts_fast.a"], modules) == {"darts_fast.b"}
    assert _imports("darts_fast.b", modules["darts_fast.b"], modules) == {"darts_fast.a"}
