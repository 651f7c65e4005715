"""The import rules of docs/architecture.md, checked on the source: which package may import
which, no cycles between packages or between modules, and neither torch nor the cloud router
anywhere the edge agent can reach. Every import counts, also one inside a function or under
TYPE_CHECKING."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: What each top-level package may import from the others (docs/architecture.md).
ALLOWED = {
    "protos": set(),
    "shared": {"protos"},
    "edge_agent": {"shared", "protos"},
    "cloud_router": {"shared", "protos"},
    "edgecascade": {"edge_agent", "cloud_router", "shared", "protos"},
    "benchmarks": {"edgecascade", "edge_agent", "cloud_router", "shared", "protos"},
}
#: Libraries the edge agent must never load, directly or through what it imports.
EDGE_FORBIDDEN = ("torch", "transformers", "safetensors", "sklearn", "scipy", "redis")


@lru_cache(maxsize=None)
def import_graph() -> dict[str, set[str]]:
    """module -> every module name it imports (absolute, as written), for our packages."""
    graph: dict[str, set[str]] = {}
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_package else parts)
            imported: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                        stem = ".".join(base + ([node.module] if node.module else []))
                    else:
                        stem = node.module or ""
                    imported.add(stem)
                    # `from pkg import mod` imports the submodule when there is one
                    imported.update(f"{stem}.{alias.name}" for alias in node.names if f"{stem}.{alias.name}" in _modules())
            graph[module] = imported
    return graph


@lru_cache(maxsize=None)
def _modules() -> frozenset[str]:
    names = set()
    for package in ALLOWED:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return frozenset(names)


def _top(name: str) -> str:
    return name.split(".")[0]


def test_each_package_imports_only_what_it_may():
    wrong = sorted(
        f"{module} imports {name}"
        for module, names in import_graph().items()
        for name in names
        if _top(name) in ALLOWED and _top(name) != _top(module) and _top(name) not in ALLOWED[_top(module)]
    )
    assert not wrong, "imports against docs/architecture.md:\n" + "\n".join(wrong)


def test_the_allowed_package_graph_has_no_cycle():
    order = _topological(ALLOWED)
    assert set(order) == set(ALLOWED)


def test_no_import_cycle_between_modules():
    """Module-level import cycles (any import counts), ignoring a module importing its own
    package's `__init__` (that is how Python loads a submodule anyway)."""
    graph = import_graph()
    edges = {
        module: {name for name in names if name in graph and name != module and not module.startswith(name + ".")}
        for module, names in graph.items()
    }
    cycles = [sorted(c) for c in _strongly_connected(edges) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_edge_agent_reaches_neither_torch_nor_the_cloud_router():
    graph = import_graph()
    seen: dict[str, str] = {}   # module -> the module that imported it
    todo = [m for m in graph if _top(m) == "edge_agent"]
    for module in todo:
        seen[module] = module
    while todo:
        module = todo.pop()
        for name in graph.get(module, ()):
            target = name if name in graph else _nearest_module(name, graph)
            forbidden = _top(name) in EDGE_FORBIDDEN or _top(name) in ("cloud_router", "edgecascade", "benchmarks")
            assert not forbidden, f"the edge agent reaches {name} through {_chain(module, seen)}"
            if target is not None and target not in seen:
                seen[target] = module
                todo.append(target)
    assert "shared.model" in seen and "shared.onnx_model" in seen   # the walk does reach the model code


def _nearest_module(name: str, graph: dict[str, set[str]]):
    while name and name not in graph:
        name = name.rpartition(".")[0]
    return name or None


def _chain(module: str, seen: dict[str, str]) -> str:
    chain = [module]
    while seen[chain[-1]] != chain[-1]:
        chain.append(seen[chain[-1]])
    return " <- ".join(chain)


def _topological(graph: dict[str, set[str]]) -> list[str]:
    order, state = [], {}

    def visit(node: str) -> None:
        assert state.get(node) != "open", f"cycle through {node}"
        if state.get(node) == "done":
            return
        state[node] = "open"
        for target in graph[node]:
            visit(target)
        state[node] = "done"
        order.append(node)

    for node in graph:
        visit(node)
    return order


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
    return components
