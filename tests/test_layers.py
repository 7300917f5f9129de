"""The doors go one way: ``app/api -> app/service -> models, index``; nothing in the
service knows HTTP, and ``models`` and ``index`` never import ``app`` or each other."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from tests.helpers import REPO


def imports(package: str) -> dict[str, set[str]]:
    """Each module of ``package`` with the top two levels of every module it imports."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        out[str(path.relative_to(REPO))] = {".".join(n.split(".")[:2]) for n in names}
    return out


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in imports(package).items()
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_the_service_knows_no_http() -> None:
    assert offenders("app/service", ("fastapi", "starlette", "uvicorn", "app.api", "app.cli")) == []


def test_models_and_index_stay_below_the_app() -> None:
    assert offenders("models", ("app", "index")) == []
    assert offenders("index", ("app", "models", "torch")) == []


def test_the_cli_reaches_the_http_floor_only_to_serve() -> None:
    found = offenders("app/cli", ("app.api",))
    assert found == ["app/cli/commands.py imports app.api"], (
        found
    )  # `xmodal serve` builds the app; everything else goes through the service


def test_decoding_images_does_not_load_torch() -> None:
    """What a batch job's decoding threads and a Ray job's decoding tasks import: a process
    that only decodes files never pays for torch (about 2 s and 0.5 GB each)."""
    code = (
        "import sys, models.decoding, models.pixels, models.images, models.sources; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def module_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Each module of ``packages`` and the modules of theirs it imports, wherever in the
    file (inside functions and ``TYPE_CHECKING`` blocks too: a type is a dependency).
    ``from pkg import sub`` is an arrow to the module ``pkg.sub`` when there is one."""
    files = {}
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [s for s in subs if s in files]
                if len(targets) < len(subs):
                    targets.append(node.module)
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(module_graph(("app", "models", "index", "bench"))) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_routes_do_not_borrow_from_each_other() -> None:
    """Work two APIs share lives in the service: a route module imports no other."""
    graph = module_graph(("app",))
    found = [
        f"{module} imports {name}"
        for module, names in graph.items()
        if module.startswith("app.api.routes.")
        for name in sorted(names)
        if name.startswith("app.api.routes.")
    ]
    assert found == []


def test_only_models_read_openclip_internals() -> None:
    """The encoder contract is what the app and the benchmarks use: nothing outside
    ``models`` reaches for a model's towers, tokenizer or context by attribute."""
    pattern = re.compile(r"\.model\.visual|\.tokenizer\b|\.context_length\b|getattr\(encoder")
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for package in ("app", "bench")
        for path in sorted((REPO / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
