"""The client (Optuna, boto3, the SageMaker SDK) stays out of the image, and commands that need no model import no torch."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE_CODE = REPO / "container" / "code"
CLIENT_ONLY = {"boto3", "botocore", "sagemaker", "optuna", "imgcls_client"}


def _imports(tree: ast.AST):
    """(top-level module name, at module level?) for every import in a module."""
    def walk(node, nested):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name.split(".")[0], not nested, child.lineno
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module.split(".")[0], not nested, child.lineno
            yield from walk(child, nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    yield from walk(tree, False)


def test_image_code_never_imports_the_client_side():
    offenders = []
    for path in sorted(IMAGE_CODE.rglob("*.py")):
        rel = path.relative_to(REPO)
        for name, module_level, line in _imports(ast.parse(path.read_text(), str(path))):
            if name not in CLIENT_ONLY:
                continue
            # the one exception: cli.py offers `tune`/`aws` by importing the client lazily where it is installed
            if rel.as_posix() == "container/code/imgcls/cli.py" and name == "imgcls_client" and not module_level:
                continue
            offenders.append(f"{rel}:{line} imports {name}{' at module level' if module_level else ''}")
    assert not offenders, "client-side imports in the image's code:\n" + "\n".join(offenders)


def test_the_scan_catches_a_module_level_import():
    found = list(_imports(ast.parse("import os\nimport optuna\ndef f():\n    import boto3\n")))
    assert ("optuna", True, 2) in found and ("boto3", False, 4) in found


def test_the_image_installs_no_client_packages():
    """The Dockerfile's dependency install (no default groups) leaves out Optuna, the SDK and our client."""
    dockerfile = (REPO / "container" / "Dockerfile").read_text()
    sync = re.search(r"uv sync ([^\n]*)", dockerfile).group(1)
    flags = sync.split()
    assert {"--frozen", "--no-default-groups", "--no-dev", "--no-install-project"} <= set(flags)
    uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` sets UV; make setup installs uv
    assert uv, "uv not found: run the tests with `uv run pytest` (make test)"
    export = subprocess.run([uv, "export", "--frozen", "--no-default-groups", "--no-dev", "--no-emit-project", "--no-hashes"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    names = {re.split(r"[=<>\s;@]", line.strip())[0].lower() for line in export.splitlines()
             if line.strip() and not line.startswith(("#", " "))}
    assert "torch" in names  # the export really is the image's dependency set
    assert not names & {"optuna", "sagemaker", "imgcls-client", "awscli"}, names & {"optuna", "sagemaker", "imgcls-client", "awscli"}


def _run_cli(argv: list[str], *, without_client: bool = False) -> subprocess.CompletedProcess:
    """Run imgcls.cli.main(argv) in a fresh interpreter and report whether torch got imported."""
    code = (
        "import sys\n"
        + ("sys.path.insert(0, %r)\n" % str(IMAGE_CODE) if without_client else "")
        + "from imgcls.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "print('TORCH_IMPORTED=' + str('torch' in sys.modules), file=sys.stderr)\n"
        "sys.exit(rc)\n")
    # -S leaves out site-packages: the image's situation, where imgcls_client does not exist
    cmd = [sys.executable, *(["-S"] if without_client else []), "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("argv", [["--help"], ["tune", "--help"], ["aws", "--help"], ["train", "--help"]])
def test_commands_that_need_no_model_import_no_torch(argv):
    proc = _run_cli(argv)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH_IMPORTED=False" in proc.stderr
    assert "usage: imgcls" in proc.stdout


def test_tune_and_aws_explain_how_to_get_the_client_where_it_is_missing():
    proc = _run_cli(["tune", "--data", "x", "--out", "y"], without_client=True)
    assert proc.returncode == 2
    assert "needs the imgcls client" in proc.stderr and "make setup" in proc.stderr
    listing = _run_cli(["--help"], without_client=True)
    assert listing.returncode == 0 and "[needs imgcls-client]" in listing.stdout


def test_backbone_names_match_the_models_that_build_them():
    from imgcls.hyperparams import BACKBONE_NAMES
    from imgcls.models import BACKBONES
    assert tuple(BACKBONES) == BACKBONE_NAMES
