"""The house rules the code can check: no method is named outside methods/ (and the analysis of
the paper's rows), the models and the bilevel math import nothing of the project's machinery."""

import ast
import pathlib

import pytest

from ebomlc_jax import methods

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ebomlc_jax"
# The paper's rows are named by the analysis of its tables; everything else asks the registry.
MAY_NAME_METHODS = ("methods", "analysis")


def python_files(*parts):
    return sorted(PACKAGE.joinpath(*parts).rglob("*.py"))


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_method_is_named_outside_methods():
    names = set(methods.REGISTRY)
    files = [p for p in python_files() if p.relative_to(PACKAGE).parts[0] not in MAY_NAME_METHODS]
    files.append(ROOT / "run.py")
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    ]
    assert not found, found


@pytest.mark.parametrize(
    "part,allowed",
    [
        ("models", ("flax", "jax", "numpy", "collections", "typing", "ebomlc_jax.models")),
        ("bilevel.py", ("jax", "collections", "typing")),
    ],
)
def test_the_models_and_the_math_import_only_what_they_are_made_of(part, allowed):
    for path in python_files(part) if not part.endswith(".py") else [PACKAGE / part]:
        for module in imported_modules(path):
            assert module.split(".")[0] in {a.split(".")[0] for a in allowed} and (
                not module.startswith("ebomlc_jax") or module.startswith(allowed[-1])
            ), f"{path.relative_to(ROOT)} imports {module}"
