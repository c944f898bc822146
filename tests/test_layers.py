"""The import graph of fpt/: no circles (but for the lazy front door, fpt/__init__.py), and the training loop
never reaches the data-parallel code (fpt/run/launch.py picks). Imports inside functions count: a lazy
import hides a circle, it does not remove it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "fpt"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the fpt modules it imports (module level or in a function); `from fpt.x import y` names
    fpt.x.y where that is a module."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fpt":
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "fpt"]
            edges[name] |= {t for t in targets if t in mods and t not in (name, "fpt")}
    edges["fpt"] = set()  # the front door imports everything, lazily, by design
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in edges[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_training_loop_never_imports_the_data_parallel_code():
    edges = import_graph()
    for module in ("fpt.run.loop", "fpt.run.step", "fpt.run.experiment", "fpt.run.files"):
        assert "fpt.run.distributed" not in reachable(edges, module), module


def test_tasks_never_import_the_training_code():
    edges = import_graph()
    below = {m for m in edges if m.startswith("fpt.tasks")}
    for module in below:
        assert not {m for m in reachable(edges, module) if m.startswith(("fpt.run", "fpt.paper"))}, \
            module


def test_a_circle_is_caught():
    """The check itself: a planted circle is found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


#: The layers of docs/architecture.md (packages), bottom first: a module may import its own layer and those below.
FLOORS = [
    ("fpt.core",),                                    # errors, registry, config, groups, rows, host, files
    ("fpt.datasets", "fpt.fastops", "fpt.csrc"),      # file formats; kernels (C sources built by fastops.native)
    ("fpt.tasks", "fpt.backbones"),                   # one file per task; the backbone registry and families
    ("fpt.models",),                                  # the FPT model, bodies, LoRA, features, precision, factory
    ("fpt.run",),                                     # experiment, step, loop, run files, checkpoint, DDP, launch
    ("fpt.inference", "fpt.bench", "fpt.paper"),      # load / predict / export; fpt bench; the paper's experiments
    ("fpt.commands", "fpt.cli", "fpt.__main__"),      # one file per subcommand
]


def floor_of(module: str) -> int | None:
    for i, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def upward_imports(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, targets in edges.items() for t in targets
                  if floor_of(m) is not None and floor_of(t) is not None and floor_of(t) > floor_of(m))


def test_every_module_has_a_floor():
    assert [m for m in import_graph() if m != "fpt" and floor_of(m) is None] == []


def test_imports_point_down():
    assert upward_imports(import_graph()) == []


def test_an_upward_import_is_caught():
    assert upward_imports({"fpt.core.config": {"fpt.run.loop"}, "fpt.run.loop": {"fpt.core.config"}}) == \
        [("fpt.core.config", "fpt.run.loop")]
