"""The joints of the code (issue 9): no import cycles, even behind a function-local import;
nothing below the CLI reads argparse objects; a backend is given, never inherited."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"vtep": ROOT / "vtep", "vxinspect": ROOT / "inspect" / "vxinspect"}
# the command layer: the CLIs parse, these handlers turn the namespace into typed values
# (`vtep lab` is a command of its own: its package is its handler)
COMMAND_LAYER = ("vtep.cli", "vtep.commands", "vtep.clustercmd", "vtep.pods", "vtep.lab",
                 "vtep.doctor.command",
                 "vxinspect.cli")


def below_the_commands(name: str) -> bool:
    return not any(name == c or name.startswith(c + ".") for c in COMMAND_LAYER)


def modules() -> dict[str, Path]:
    out = {}
    for pkg, base in PACKAGES.items():
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((pkg, *parts))] = path
    return out


def imports_of(name: str, path: Path, known) -> set[str]:
    """Every module of ours that `name` imports, at any depth of its code (a function-local
    import is an import all the same: it only hides the cycle until the function runs)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from . import x` names a module x; `from .m import f` names module m
            targets = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            targets = targets or [mod]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_through_a_local_import(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("from . import b\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from .a import g\n")
    known = {"p.a", "p.b"}
    graph = {"p.a": imports_of("p.a", a, known), "p.b": imports_of("p.b", b, known)}
    assert cycles(graph) == [["p.a", "p.b"]]


def test_no_module_imports_itself_back():
    mods = modules()
    graph = {name: imports_of(name, path, mods) for name, path in mods.items()}
    assert graph["vtep.commands"] >= {"vtep.reconcile", "vtep.daemon"}   # the graph is real
    # a package's __init__ that imports its submodules is not a cycle of theirs
    for pkg in list(graph):
        if pkg in PACKAGES or pkg.count(".") == 1 and mods[pkg].name == "__init__.py":
            graph[pkg] = set()
    assert cycles(graph) == []


@pytest.mark.parametrize("name", sorted(filter(below_the_commands, modules())))
def test_nothing_below_the_command_layer_reads_argparse(name):
    """A function parameter named `args` (argparse's namespace, by convention) or a
    getattr() with a default, or a hasattr() (a feature test), is how argparse objects
    and duck-typed features leaked down."""
    tree = ast.parse(modules()[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            assert node.arg != "args", f"{name}: a function takes `args`"
        if isinstance(node, ast.Call):
            fn = getattr(node.func, "id", None)
            if fn == "hasattr" or fn == "getattr" and len(node.args) == 3:
                pytest.fail(f"{name} line {node.lineno}: {fn}() tests for a feature")


def test_a_backend_is_given_to_the_reconciler_not_a_base_class():
    from vtep import reconcile, userspace, vxlanlink
    for backend in (vxlanlink.VxlanLink(None, "a"), userspace.TapLink(None, "a")):
        kind = type(backend)
        assert kind.__mro__[1:] == (object,), f"{kind.__name__} inherits"
        assert isinstance(backend, reconcile.DeviceBackend), kind.__name__
        assert backend.io() == {} and backend.counters() == {}   # nothing before ensure()
    assert reconcile.Reconciler.__mro__[1:] == (object,)
    assert not isinstance(object(), reconcile.DeviceBackend)   # the check can fail
