"""The layout reads as the architecture: each layer imports only the layers below it, and no module
imports itself back through another, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> the packages of ours it may import (besides itself)
ALLOWED = {
    "costmodel": set(),                                   # the pure domain
    "forecasting": {"costmodel"},                         # forecasts of spend series (statsforecast), no I/O
    "anomalies": set(),                                   # anomaly detection against seasonal baselines, no I/O
    "contracts": {"costmodel", "anomalies"},              # events, configuration, topics
    "infra": {"contracts", "costmodel"},                  # Kafka clients, local services, checkpoints
    "storage": {"contracts", "costmodel", "infra"},      # adapters ...
    "collectors": {"contracts", "costmodel", "infra", "anomalies"},
    "streams": {"contracts", "costmodel", "infra", "anomalies"},
    "alerts": {"contracts", "costmodel", "infra", "storage", "forecasting"},
    "reports": {"contracts", "costmodel", "storage", "forecasting"},
    "dashboards": {"contracts", "costmodel", "storage"},
    "hybridspend": {"contracts", "costmodel", "infra", "storage", "collectors", "streams", "alerts",
                    "reports", "dashboards", "forecasting", "anomalies"},  # entrypoints: the CLI, demo, simulate
    "bench": {"contracts", "costmodel", "infra", "storage", "collectors", "streams", "alerts", "reports",
              "hybridspend", "forecasting", "anomalies"},                # drives the entrypoints, never imported by them
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module of ours this file imports, at any depth of its code."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {_in_tree(name) for name in found if _in_tree(name).split(".")[0] in ALLOWED}


def _in_tree(name: str) -> str:
    """A module's name as its folder in the source tree: hybridspend.streams.topology -> streams.topology
    (everything installs under hybridspend; the folders sit at the top of the repository)."""
    head, _, rest = name.partition(".")
    return rest if head == "hybridspend" and rest.split(".")[0] in ALLOWED else name


def _graph() -> dict[str, set[str]]:
    modules = {}
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            modules[_module_name(path)] = path
    graph = {}
    for module, path in modules.items():
        # an import names a module, or a name inside one: keep the longest known module
        targets = set()
        for name in _imports(path, module):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def test_every_package_imports_only_the_layers_below_it():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0]
        and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    )
    assert wrong == []


def test_no_module_imports_itself_back():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_every_module_imports():
    import importlib

    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = _module_name(path)
            if not module.endswith("__main__"):
                importlib.import_module(module if package in ("hybridspend", "bench") else f"hybridspend.{module}")


def test_everything_installs_under_one_name():
    """Nothing of ours is imported by a generic top-level name (``contracts``, ``storage``, ...): in an
    environment that has another package of that name, one of the two would break."""
    generic = sorted(f"{path.relative_to(ROOT)}: {line.strip()}"
                     for package in [*ALLOWED, "tests"] for path in (ROOT / package).rglob("*.py")
                     for line in path.read_text().splitlines()
                     if line.lstrip().startswith(("from ", "import ")) and len(line.split()) > 1
                     and line.split()[1].split(".")[0] in set(ALLOWED) - {"hybridspend", "bench"})
    assert generic == []


def test_the_wheel_maps_every_package_folder_under_hybridspend_and_leaves_the_benchmarks_out():
    """pyproject.toml lists each installed package and the folder it comes from; a new folder of code
    that is not listed would be missing from the wheel (``make wheel-check`` builds it and runs the demo
    beside a foreign ``contracts`` package)."""
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {str(path.parent.relative_to(ROOT)).replace("/", ".") for package in ALLOWED if package != "bench"
               for path in (ROOT / package).rglob("__init__.py")}
    installed = {name.removeprefix("hybridspend.") if name != "hybridspend" else name for name in setup["packages"]}
    assert installed == folders
    top = {name.split(".")[1] for name in setup["package-dir"] if name != "hybridspend"}
    assert all(setup["package-dir"][f"hybridspend.{t}"] == t for t in top) and "bench" not in top
    assert all(name == "hybridspend" or name.startswith("hybridspend.") for name in setup["packages"])
