"""Which way imports point (README "Layout"; lab/__init__.py): the installed package never reaches into the clone,
the lab never into the benchmarks or the tests, nothing loads a script by its path or edits sys.path, and no two
modules of the repository import each other, directly or through others (top-level and function-level imports both
count). Read from the source with `ast`: nothing is imported or run."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE, LAB, BENCHMARKS = "openrlhf_contrastive", "lab", "benchmarks"
# What only a clone has: its folders, and the modules of lab/cpu_training that run with their folder on PYTHONPATH.
CPU_TRAINING_SCRIPTS = {p.stem for p in (REPO / LAB / "cpu_training").glob("*.py")}
CLONE_ONLY_IMPORTS = {LAB, BENCHMARKS, "tests", *CPU_TRAINING_SCRIPTS}
CLONE_ONLY_PATH_PARTS = {LAB, BENCHMARKS, "cpu_training", "support"}
PATH_LOADERS = {"spec_from_file_location", "run_path", "SourceFileLoader", "load_source"}


def modules(folder: str) -> dict[str, Path]:
    """{dotted module name: file} of the .py files under a top-level folder (lab/cpu_training's scripts excluded:
    they are commands, imported only by each other with their folder on the path)."""
    found = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        if "cpu_training" in rel.parts:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found[".".join(parts)] = path
    return found


def imported(name: str, path: Path) -> set[str]:
    """Every module name the file imports, anywhere in it (relative imports resolved)."""
    names = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def clone_paths_named(path: Path) -> list[str]:
    """String constants (docstrings aside) that name a clone-only folder as a path: `benchmarks/...`, `lab`, ..."""
    tree = ast.parse(path.read_text())
    skip = docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            parts = set(node.value.replace("\\", "/").split("/")) if "/" in node.value else {node.value}
            if parts & CLONE_ONLY_PATH_PARTS:
                found.append(node.value)
    return found


def path_loading(path: Path) -> list[str]:
    """Calls that load a file as a module, and sys.path edits."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in PATH_LOADERS:
            found.append(node.attr)
        if (isinstance(node, ast.Attribute) and node.attr in {"insert", "append", "extend"}
                and isinstance(node.value, ast.Attribute) and node.value.attr == "path"):
            found.append(f"sys.path.{node.attr}")
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Attribute) and node.target.attr == "path":
            found.append("sys.path +=")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "path" \
                and isinstance(node.ctx, ast.Store):
            found.append("sys.path[...] =")
    return found


ALL = {**modules(PACKAGE), **modules(LAB), **modules(BENCHMARKS)}


@pytest.mark.parametrize("name", sorted(modules(PACKAGE)))
def test_the_installed_package_imports_nothing_of_the_clone(name):
    path = ALL[name]
    reached = {n for n in imported(name, path) if n.split(".")[0] in CLONE_ONLY_IMPORTS}
    assert not reached, f"{path.relative_to(REPO)} imports clone-only {sorted(reached)}"
    assert not clone_paths_named(path), f"{path.relative_to(REPO)} names clone-only paths {clone_paths_named(path)}"


@pytest.mark.parametrize("name", sorted(modules(LAB)))
def test_the_lab_imports_neither_benchmarks_nor_tests(name):
    reached = {n for n in imported(name, ALL[name]) if n.split(".")[0] in {BENCHMARKS, "tests"}}
    assert not reached, f"{ALL[name].relative_to(REPO)} imports {sorted(reached)}"


@pytest.mark.parametrize("name", sorted(set(modules(LAB)) | set(modules(BENCHMARKS))))
def test_no_script_loads_another_by_path_or_edits_sys_path(name):
    assert not path_loading(ALL[name]), f"{ALL[name].relative_to(REPO)}: {path_loading(ALL[name])}"


def test_no_import_cycle_in_the_repository():
    graph = {name: {target for imp in imported(name, path) for target in (imp, imp.rpartition(".")[0])
                    if target in ALL and target != name}
             for name, path in ALL.items()}
    # a package's __init__ importing its own submodules is not a cycle of files that load each other
    graph = {name: {t for t in targets if not (t.startswith(name + ".") and ALL[name].name == "__init__.py")}
             for name, targets in graph.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_what_they_check(tmp_path):
    """The scanners find what they are for (so that the tests above cannot pass by reading nothing)."""
    sample = tmp_path / "sample.py"
    sample.write_text('"""mentions benchmarks/evidence in a docstring"""\nimport sys\nimport importlib.util\n'
                      'sys.path.insert(0, "x")\nfrom lab import harness\nfrom .x import y\n'
                      'importlib.util.spec_from_file_location("m", "benchmarks/evidence/run.py")\n')
    assert {"lab", "lab.harness", "pkg.x", "pkg.x.y"} <= imported("pkg.mod", sample)
    assert path_loading(sample) == ["sys.path.insert", "spec_from_file_location"] or \
        sorted(path_loading(sample)) == ["spec_from_file_location", "sys.path.insert"]
    assert clone_paths_named(sample) == ["benchmarks/evidence/run.py"]
    assert len(modules(PACKAGE)) > 10 and "lab.harness" in ALL and "benchmarks.evidence_v2.run" in ALL
