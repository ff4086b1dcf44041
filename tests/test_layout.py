"""The house's rules, read from the code: imports flow one way (docs/ARCHITECTURE.md, "Packages").

data (mnist) -> training -> export -> artifacts -> serving -> HTTP -> loadtest; experiments drive them all
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("timing", "mnist", "training", "export", "serving", "loadtest", "experiments", "fuzz")
# package -> top-level modules it must not import, anywhere in its files (inside functions too)
FORBIDDEN = {
    "timing": {"torch", "mnist", "training", "export", "serving", "loadtest", "experiments"},  # used by all
    "mnist": {"torch", "training", "export", "serving", "loadtest", "experiments"},
    "training": {"export", "serving", "loadtest", "experiments"},
    "export": {"serving", "loadtest", "experiments"},
    "serving": {"torch", "torchvision", "training", "export", "loadtest", "mnist", "experiments", "timing"},
    "loadtest": {"torch", "torchvision", "training", "export", "experiments"},
    "experiments": {"serving"},  # it reaches the service the way a user does: a process and HTTP
    "fuzz": {"torch", "torchvision", "training", "export", "experiments"},  # serving's parsers; loadtest starts a service
}
# torchvision is mnist's last-resort download, imported inside that one function only
ALLOWED_IN_FUNCTION = {"mnist": {"torchvision"}}


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, at module level) for every import in path."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module, id(node) in top_level)]
    return found


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for line, module, top in imports(path):
                head = module.split(".")[0]
                if head in FORBIDDEN[package] and (top or head not in ALLOWED_IN_FUNCTION.get(package, set())):
                    found.append(f"{path.relative_to(root)}:{line}: {package}/ imports {module}")
    return found


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cycles(root: Path = ROOT) -> list[str]:
    """Import cycles between the project's modules (module-level and function-level imports alike)."""
    modules = {module_name(p, root): p for package in PACKAGES for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for _, module, _ in imports(path):
            if module in modules and module != name and modules[module].name != "__init__.py":
                graph[name].add(module)
    found: list[str] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                found.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for node in sorted(modules):
        if node not in done:
            visit(node, [node])
    return found


def test_imports_flow_one_way():
    assert violations() == []


def test_no_import_cycles():
    assert cycles() == []


def test_the_rules_catch_each_import_they_forbid(tmp_path):
    """The checks themselves: the three imports that once ran against the flow are each caught."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "export" / "onnx_export.py").write_text("from export.variants import build\n")
    (tmp_path / "export" / "variants.py").write_text("def f():\n    from export.onnx_export import x\n")
    (tmp_path / "export" / "bench.py").write_text("from serving.runtime import INPUT\n")
    (tmp_path / "loadtest" / "run.py").write_text("from training.data import load_split\n")
    (tmp_path / "serving" / "runtime.py").write_text("def f():\n    import torch\n")
    (tmp_path / "mnist" / "fallback.py").write_text("def f():\n    import torchvision\n")
    assert violations(tmp_path) == [
        "export/bench.py:1: export/ imports serving.runtime",
        "serving/runtime.py:2: serving/ imports torch",
        "loadtest/run.py:1: loadtest/ imports training.data",
    ]
    assert cycles(tmp_path) == ["export.onnx_export -> export.variants -> export.onnx_export"]


NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "


def test_loadtest_help_runs_without_torch():
    code = NO_TORCH + "import runpy; sys.argv = ['x', '--help']; runpy.run_module('loadtest', run_name='__main__')"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage: python -m loadtest" in run.stdout


def test_service_and_load_test_import_without_torch():
    code = NO_TORCH + "import serving.service, loadtest.run, loadtest.locustfile, mnist; print('ok')"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


OUTSIDE = ("../" + "shared", "shared/" + "DESIGN", "/" + "work/")  # the design notes and machines live outside


def test_no_file_names_a_path_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".safetensors", ".onnx", ".jsonl"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if any(marker in text for marker in OUTSIDE):
            offenders.append(name)
    assert offenders == [], offenders


def test_every_document_the_readme_links_is_in_the_repository():
    import re

    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    for doc in ("README.md", "docs/ARCHITECTURE.md", "models/README.md", "BENCHMARKS.md"):
        links = re.findall(r"\]\(([^)#\s]+)", (ROOT / doc).read_text())
        local = [link for link in links if "://" not in link]
        targets = {str((ROOT / doc).parent.joinpath(link).resolve().relative_to(ROOT)) for link in local}
        assert targets <= tracked, (doc, sorted(targets - tracked))


# The request path's boundaries inside serving/ (docs/ARCHITECTURE.md, "The request path"): the middleware
# that runs before a body is parsed holds no route logic, the fast path only picks the route, and nothing
# finds the service through BentoML's global lookup (the service hands each part what it needs).
SERVING_RULES = {
    "serving/limits.py": {"serving", "bentoml"},  # constants only
    "serving/errors.py": {"serving", "bentoml"},
    "serving/app.py": {"bentoml", "serving.service", "serving.runtime", "serving.batching", "serving.preprocess"},
    "serving/routes.py": {"bentoml", "serving.service", "serving.app"},
    "serving/v2.py": {"bentoml", "serving.service", "serving.app"},
}
# BentoML's and uvicorn's internals are touched in serving/framework.py only
INTERNALS = ("uvicorn", "bentoml._internal", "_bentoml_impl", "_bentoml_sdk", "circus")
FRAMEWORK = "serving/framework.py"


def serving_violations(root: Path = ROOT) -> list[str]:
    found = []
    for name, forbidden in SERVING_RULES.items():
        for line, module, _ in imports(root / name):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.append(f"{name}:{line}: imports {module}")
    for path in sorted((root / "serving").rglob("*.py")):
        name = str(path.relative_to(root))
        if "get_current_service" in path.read_text():
            found.append(f"{name}: looks the service up globally (get_current_service)")
        if name != FRAMEWORK:
            found += [f"{name}:{line}: imports {module}, an internal ({FRAMEWORK} holds them)"
                      for line, module, _ in imports(path)
                      if any(module == f or module.startswith(f + ".") for f in INTERNALS)]
    return found


def test_the_request_paths_boundaries_hold():
    assert serving_violations() == []


def test_the_request_path_rules_catch_what_they_forbid(tmp_path):
    (tmp_path / "serving").mkdir()
    for name in SERVING_RULES:
        (tmp_path / name).write_text("")
    (tmp_path / "serving" / "limits.py").write_text("from serving.routes import Routes\n")
    (tmp_path / "serving" / "routes.py").write_text("import bentoml\n")
    (tmp_path / "serving" / "app.py").write_text("def f():\n    return bentoml.get_current_service()\n")
    (tmp_path / "serving" / "batching.py").write_text("from bentoml._internal.marshal import dispatcher\n")
    assert serving_violations(tmp_path) == [
        "serving/limits.py:1: imports serving.routes",
        "serving/routes.py:1: imports bentoml",
        "serving/app.py: looks the service up globally (get_current_service)",
        "serving/batching.py:1: imports bentoml._internal.marshal, an internal (serving/framework.py holds them)",
    ]
