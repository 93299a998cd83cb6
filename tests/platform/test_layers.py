"""Dependencies run one way, read from the source (`ast`, so an import inside a
function or under TYPE_CHECKING counts as much as one at the top):

- services never import a task module (tasks import services); only the adapters
  under apps/ (an app's admin.py, its management commands) may;
- admission, money, limits, caches, the catalog, accounts, tenants, flags,
  controls, observability and the provider code never import the job app;
- apps/core imports no other app (it is the bottom layer);
- the provider code (apps/llm) imports none of billing, cache, ratelimit,
  controls, flags or jobs;
- no two modules import each other, directly or around a circle;
- no module is over MAX_LINES lines (migrations, tests and devtools aside).

A failure names the importing file, the line and what it imports.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERED = ("apps", "tasks")  # the packages whose imports are checked
MAX_LINES = 420

NO_JOBS = (
    "admission",
    "billing",
    "ratelimit",
    "cache",
    "catalog",
    "accounts",
    "tenants",
    "flags",
    "controls",
    "observability",
    "llm",
)
LLM_MAY_NOT = ("apps.billing", "apps.cache", "apps.ratelimit", "apps.controls", "apps.flags", "apps.jobs")


@dataclass(frozen=True)
class Import:
    file: str  # the importing file, relative to the repository
    line: int
    target: str  # the absolute name of the module imported

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.target}"


def _is_migration(path: Path) -> bool:
    return "migrations" in path.parts


def _sources() -> Iterator[Path]:
    for top in LAYERED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if not _is_migration(path.relative_to(ROOT)):
                yield path


def _name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _project_modules() -> dict[str, str]:
    """Module name -> its file (relative), for every checked module."""
    return {_name(p.relative_to(ROOT)): str(p.relative_to(ROOT)) for p in _sources()}


def _absolute(node: ast.ImportFrom, relative: Path) -> str:
    if not node.level:
        return node.module or ""
    package = _name(relative).split(".")
    if relative.name != "__init__.py":
        package = package[:-1]  # a module's imports are relative to its package
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


@functools.cache
def _imports() -> tuple[Import, ...]:
    modules = _project_modules()
    found: list[Import] = []
    for path in _sources():
        relative = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(relative))):
            if isinstance(node, ast.Import):
                found.extend(Import(str(relative), node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, relative)
                found.append(Import(str(relative), node.lineno, base))
                # `from apps.core import webhooks` imports the module apps.core.webhooks.
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        found.append(Import(str(relative), node.lineno, f"{base}.{alias.name}"))
    return tuple(found)


def _within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _app(file: str) -> str | None:
    parts = Path(file).parts
    return parts[1] if parts[0] == "apps" and len(parts) > 2 else None


def _is_adapter(file: str) -> bool:
    parts = Path(file).parts
    return parts[0] == "apps" and (parts[-1] == "admin.py" or "management" in parts)


def _report(what: str, breaches: list[Import]) -> str:
    return f"{what}:\n  " + "\n  ".join(str(b) for b in breaches)


def test_services_import_no_task_module():
    breaches = [
        i for i in _imports() if i.file.startswith("apps/") and _within(i.target, "tasks") and not _is_adapter(i.file)
    ]
    assert not breaches, _report(
        "apps/ imports tasks (only an app's admin.py and management commands may;"
        " send work by name with apps.core.dispatch.task_send)",
        breaches,
    )


def test_only_the_job_app_imports_the_job_app():
    breaches = [i for i in _imports() if _app(i.file) in NO_JOBS and _within(i.target, "apps.jobs")]
    assert not breaches, _report(f"apps.jobs imported by an app below it ({', '.join(NO_JOBS)})", breaches)


def test_core_imports_no_other_app():
    breaches = [
        i
        for i in _imports()
        if _app(i.file) == "core" and _within(i.target, "apps") and not _within(i.target, "apps.core")
    ]
    assert not breaches, _report("apps/core imports another app (it is the bottom layer)", breaches)


def test_the_provider_code_imports_no_money_limits_caches_or_jobs():
    breaches = [i for i in _imports() if _app(i.file) == "llm" and _within(i.target, *LLM_MAY_NOT)]
    assert not breaches, _report(f"apps/llm imports one of {', '.join(LLM_MAY_NOT)}", breaches)


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    modules = _project_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for i in _imports():
        if i.target not in modules:
            continue
        graph[_name(Path(i.file))].add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _describe(components: list[list[str]]) -> str:
    lines = []
    for component in components:
        members = set(component)
        edges = [str(i) for i in _imports() if _name(Path(i.file)) in members and i.target in members]
        lines.append(f"{', '.join(component)}:\n    " + "\n    ".join(sorted(set(edges))))
    return "import cycles:\n  " + "\n  ".join(lines)


def test_no_import_cycle():
    components = _cycles()
    assert not components, _describe(components)


def _sized_files() -> list[str]:
    """Every Python file of the project but migrations, tests and devtools."""
    skipped = {"tests", "devtools"}
    files = list(ROOT.glob("*.py"))
    for top in sorted(ROOT.iterdir()):
        if top.is_dir() and not top.is_symlink() and top.name not in skipped and (top / "__init__.py").exists():
            files.extend(top.rglob("*.py"))
    return sorted(str(p.relative_to(ROOT)) for p in files if not _is_migration(p.relative_to(ROOT)))


@pytest.mark.parametrize("file", _sized_files())
def test_no_module_is_too_long(file: str):
    lines = len((ROOT / file).read_text().splitlines())
    assert lines <= MAX_LINES, f"{file} has {lines} lines (at most {MAX_LINES}): split it by what it owns"
