"""Deploying a Space: ``scripts/deploy_space.sh`` and its checker ``scripts/check_space.py``.

The remote is a local bare repository (git-lfs stores the weights in its ``lfs/`` folder), so the
whole path runs offline: stage, check, commit, push, clone back, start the clone.
"""

from __future__ import annotations

import base64
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from scripts.check_space import check_space, gitattributes_text
from shared.models import LFS_POINTER_PREFIX, is_lfs_pointer
from tests.harness import ROOT, space_names, start_space

SCRIPT = ROOT / "scripts" / "deploy_space.sh"
CHECKER = ROOT / "scripts" / "check_space.py"
GIT = shutil.which("git")
HAS_LFS = (
    GIT is not None and subprocess.run([GIT, "lfs", "version"], capture_output=True).returncode == 0
)
needs_git_lfs = pytest.mark.skipif(
    not HAS_LFS, reason="needs git and git-lfs (apt install git-lfs)"
)

FRONT_MATTER = {
    "title": "Demo",
    "emoji": "🧪",
    "colorFrom": "blue",
    "colorTo": "green",
    "sdk": "gradio",
    "sdk_version": "6.0.0",
    "app_file": "app.py",
    "short_description": "A throwaway Space for the deploy tests",
}
POINTER = LFS_POINTER_PREFIX + b"\noid sha256:" + b"0" * 64 + b"\nsize 179888\n"


def write_space(
    folder: Path,
    front_matter: dict[str, object] | None = None,
    *,
    app: str = "import shared\n",
    requirements: str = "numpy==2.1.0\n",
    gitattributes: bool = True,
) -> Path:
    """A small valid gradio Space in ``folder`` (with the vendored ``shared/`` when staged)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = FRONT_MATTER if front_matter is None else front_matter
    readme = f"---\n{yaml.safe_dump(meta, allow_unicode=True, sort_keys=False)}---\n# Demo\n"
    (folder / "README.md").write_text(readme, encoding="utf-8")
    (folder / "app.py").write_text(app, encoding="utf-8")
    (folder / "requirements.txt").write_text(requirements, encoding="utf-8")
    if gitattributes:
        (folder / ".gitattributes").write_text(gitattributes_text(), encoding="utf-8")
    return folder


def messages(folder: Path, **kwargs: object) -> list[str]:
    return [str(p) for p in check_space(folder, **kwargs)]


# --- Checker ---------------------------------------------------------------------------------


def test_valid_space_passes(tmp_path):
    space = write_space(tmp_path / "demo")
    (space / "shared").mkdir()
    (space / "shared" / "__init__.py").write_text("")
    (space / "model.safetensors").write_bytes(b"\0" * 2048)
    assert messages(space) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"title": None}, "README.md: front matter: missing required key 'title'"),
        ({"emoji": None}, "README.md: front matter: missing required key 'emoji'"),
        ({"sdk": None}, "missing required key 'sdk' (one of gradio, docker, static)"),
        ({"sdk": "streamlit"}, "sdk 'streamlit' is not one of gradio, docker, static"),
        ({"sdk_version": None}, "missing required key 'sdk_version'"),
        ({"sdk_version": 6.0}, "sdk_version must be a quoted string"),
        ({"python_version": 3.10}, "python_version must be a quoted string"),
        ({"app_file": "main.py"}, "app_file 'main.py' does not exist"),
        ({"colorFrom": "orange"}, "colorFrom 'orange' is not one of red, yellow, green"),
        ({"colorTo": None}, "missing required key 'colorTo'"),
        ({"short_description": "x" * 61}, "short_description is 61 characters (at most 60)"),
    ],
)
def test_front_matter_problems(tmp_path, change, expected):
    meta = {k: v for k, v in {**FRONT_MATTER, **change}.items() if v is not None}
    found = messages(write_space(tmp_path / "demo", meta))
    assert any(expected in m for m in found), found


def test_readme_without_front_matter(tmp_path):
    space = write_space(tmp_path / "demo")
    (space / "README.md").write_text("# Demo\n", encoding="utf-8")
    assert messages(space) == ["README.md: no front matter: the file must start with a '---' line"]


def test_docker_space_needs_dockerfile_and_port(tmp_path):
    meta = {**FRONT_MATTER, "sdk": "docker"}
    del meta["sdk_version"]
    space = write_space(tmp_path / "demo", meta)
    assert messages(space) == [
        "README.md: front matter: missing required key 'app_port' for a docker Space",
        "Dockerfile: missing: a docker Space needs a Dockerfile",
    ]
    space = write_space(tmp_path / "demo", {**meta, "app_port": 7860})
    (space / "Dockerfile").write_text("FROM python:3.11-slim\n")
    assert messages(space) == []


def test_unpinned_requirements(tmp_path):
    requirements = (
        "# comment\n\nnumpy==2.1.0  # pinned\ntorch>=2.0\n"
        "transformers\n-r base.txt\n--extra-index-url https://download.pytorch.org/whl/cpu\n"
        "uvicorn[standard]==0.30.0; python_version >= '3.10'\n"
    )
    found = messages(write_space(tmp_path / "demo", requirements=requirements))
    assert found == [
        "requirements.txt:4: 'torch>=2.0' is not pinned: write name==version",
        "requirements.txt:5: 'transformers' is not pinned: write name==version",
        "requirements.txt:6: '-r base.txt' is not allowed: list pinned requirements only",
    ]


def test_gradio_pin_must_match_sdk_version(tmp_path):
    found = messages(write_space(tmp_path / "demo", requirements="gradio==5.9.1\n"))
    assert found == [
        "requirements.txt:1: pins gradio==5.9.1 but README sdk_version is 6.0.0: "
        "make them equal (or drop the pin)"
    ]


def test_lfs_pointer_weight_is_reported(tmp_path):
    space = write_space(tmp_path / "demo")
    (space / "model").mkdir()
    (space / "model" / "model.safetensors").write_bytes(POINTER)
    assert is_lfs_pointer(space / "model" / "model.safetensors")
    found = messages(space)
    assert len(found) == 1
    assert found[0].startswith("model/model.safetensors: is a Git LFS pointer")


def test_weights_not_tracked_by_lfs(tmp_path):
    space = write_space(tmp_path / "demo", gitattributes=False)
    (space / ".gitattributes").write_text("*.onnx filter=lfs diff=lfs merge=lfs -text\n")
    (space / "weights.bin").write_bytes(b"\1" * 4096)
    (space / "model.onnx").write_bytes(b"\1" * 4096)
    with (space / "table.csv").open("wb") as f:  # big but not weight-like by name
        f.truncate(11 * 1024 * 1024)
    found = messages(space)
    assert len(found) == 2, found
    assert found[0].startswith("table.csv: weight-like file (11.5 MB) not tracked by git-lfs")
    assert found[1].startswith("weights.bin: weight-like file (0.0 MB) not tracked by git-lfs")


def test_imports_of_monorepo_and_other_spaces(tmp_path):
    spaces = tmp_path / "spaces"
    write_space(spaces / "other", app="import shared\n")
    (spaces / "other" / "helpers.py").write_text("X = 1\n")
    app = (
        "import json\nimport numpy\nimport shared\nfrom shared.errors import InputError\n"
        "import local_module\nfrom . import sibling\n"
        "from tests.harness import start_space\nimport helpers\nfrom shared.nope import x\n"
    )
    mine = write_space(spaces / "mine", app=app)
    (mine / "local_module.py").write_text("")
    (mine / "shared").mkdir()
    (mine / "shared" / "errors.py").write_text("")
    found = messages(mine, spaces_dir=spaces, name="mine")
    assert found == [
        "app.py:7: imports 'tests.harness', which exists only in the monorepo",
        "app.py:8: imports 'helpers' from the Space 'other': Spaces may only share code "
        "through shared/",
        "app.py:9: imports shared.nope, which shared/ lacks",
    ]


def test_checker_cli_prints_one_line_per_problem(tmp_path):
    space = write_space(tmp_path / "demo", requirements="torch\n")
    (space / "w.pt").write_bytes(POINTER)
    result = subprocess.run(
        [sys.executable, CHECKER, space], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("requirements.txt:1: 'torch' is not pinned")
    assert lines[1].startswith("w.pt: is a Git LFS pointer")


# --- The deploy script -----------------------------------------------------------------------


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for the script: no Hub settings, an empty git config, temp under tmp."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_OWNER")}
    gitconfig = tmp_path / "gitconfig"
    gitconfig.touch()
    env.update(
        GIT_CONFIG_GLOBAL=str(gitconfig),
        GIT_CONFIG_NOSYSTEM="1",
        TMPDIR=str(tmp_path),
        PYTHON=sys.executable,
        **extra,
    )
    return env


def deploy(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", SCRIPT, *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


def git(*args: object, env: dict[str, str], cwd: Path | None = None) -> str:
    result = subprocess.run(
        [GIT, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, check=True
    )
    return result.stdout


def clone(remote: Path, dest: Path, env: dict[str, str]) -> Path:
    """Clone ``remote`` and fetch its LFS objects, as a user (or the Hub's builder) would."""
    git("clone", "--quiet", "--branch", "main", f"file://{remote}", dest, env=env)
    git("lfs", "install", "--local", env=env, cwd=dest)
    git("lfs", "pull", env=env, cwd=dest)
    return dest


def bare_remote(tmp_path: Path, env: dict[str, str]) -> Path:
    remote = tmp_path / "remote.git"
    git("init", "--quiet", "--bare", "--initial-branch", "main", remote, env=env)
    return remote


def staged_dir(stdout: str) -> Path:
    line = next(x for x in stdout.splitlines() if x.startswith("Staged "))
    return Path(line.split(" at: ", 1)[1])


def test_help_and_usage_errors(tmp_path):
    env = script_env(tmp_path)
    result = deploy("--help", env=env)
    assert result.returncode == 0
    assert "Usage: scripts/deploy_space.sh <space>" in result.stdout
    result = deploy("no-such-space", "--dry-run", env=env)
    assert result.returncode == 2
    assert "no Space 'no-such-space'" in result.stderr
    spaces = tmp_path / "spaces"
    write_space(spaces / "demo")
    result = deploy("demo", "--spaces-dir", spaces, env=env)
    assert result.returncode == 2
    assert "nowhere to push: set HF_OWNER" in result.stderr
    result = deploy("demo", "--spaces-dir", spaces, "--remote", "https://u:hf_x@h/s", env=env)
    assert result.returncode == 2
    assert "must not carry credentials" in result.stderr


@pytest.mark.parametrize("space", space_names())
def test_dry_run_passes_for_every_space(tmp_path, space):
    result = deploy(space, "--dry-run", env=script_env(tmp_path))
    assert result.returncode == 0, result.stderr
    staged = staged_dir(result.stdout)
    assert staged.is_relative_to(tmp_path)
    assert (staged / "shared" / "__init__.py").is_file()
    assert (staged / ".gitattributes").is_file()
    assert not (staged / "tests").exists()
    assert "git" in result.stdout and "shared/__init__.py" in result.stdout


def test_dry_run_stages_without_tests_and_caches(tmp_path):
    spaces = tmp_path / "spaces"
    space = write_space(spaces / "demo", gitattributes=False)
    for junk in (
        "tests/test_app.py",
        "__pycache__/app.cpython-311.pyc",
        "benchmarks/results/r.json",
    ):
        (space / junk).parent.mkdir(parents=True, exist_ok=True)
        (space / junk).write_text("x")
    (space / "benchmarks" / "run.py").write_text("import shared\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    args = ("demo", "--dry-run", "--spaces-dir", spaces, "--include-model", model)
    result = deploy(*args, env=script_env(tmp_path))
    assert result.returncode == 0, result.stderr
    staged = staged_dir(result.stdout)
    files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    shared_files = [
        f"shared/{p.relative_to(ROOT / 'shared').as_posix()}"
        for p in (ROOT / "shared").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    space_files = [".gitattributes", "README.md", "app.py", "benchmarks/run.py", "requirements.txt"]
    assert files == sorted([*space_files, "model/model.safetensors", *shared_files])
    assert (staged / ".gitattributes").read_text() == gitattributes_text()
    assert "lfs          4096  model/model.safetensors" in result.stdout


def test_failed_checks_stop_the_deploy(tmp_path):
    env = script_env(tmp_path)
    spaces = tmp_path / "spaces"
    write_space(spaces / "demo", requirements="torch>=2\n")
    remote = bare_remote(tmp_path, env)
    result = deploy("demo", "--spaces-dir", spaces, "--remote", remote, env=env)
    assert result.returncode == 3
    assert "requirements.txt:1: 'torch>=2' is not pinned" in result.stderr
    assert "demo failed its checks" in result.stderr
    assert git("--git-dir", remote, "for-each-ref", env=env) == ""


@needs_git_lfs
def test_deploy_round_trip_through_lfs(tmp_path):
    env = script_env(tmp_path)
    spaces = tmp_path / "spaces"
    space = write_space(spaces / "demo", gitattributes=False)
    model = tmp_path / "model"
    model.mkdir()
    weights = os.urandom(200_000)
    (model / "model.safetensors").write_bytes(weights)
    (model / "config.json").write_text("{}")
    remote = bare_remote(tmp_path, env)
    args = ("demo", "--spaces-dir", spaces, "--remote", remote, "--include-model", model)

    first = deploy(*args, env=env)
    assert first.returncode == 0, first.stderr
    cloned = clone(remote, tmp_path / "clone1", env)
    assert (cloned / "model" / "model.safetensors").read_bytes() == weights
    # Stored in git as a pointer, the bytes in the remote's LFS store.
    blob = git("cat-file", "-p", "HEAD:model/model.safetensors", env=env, cwd=cloned)
    assert blob.startswith(LFS_POINTER_PREFIX.decode())
    assert (cloned / "shared" / "__init__.py").is_file()
    assert (cloned / "shared" / "serving.py").is_file()
    assert not (cloned / "tests").exists()
    author = git("log", "-1", "--format=%an <%ae>", env=env, cwd=cloned)
    assert author.strip() == "Space deploy <deploy@localhost>"

    # A second deploy is one more commit on top of the remote's history (never a force push).
    (space / "app.py").write_text("import shared\n# v2\n")
    second = deploy(*args, "--message", "Second deploy", env=env)
    assert second.returncode == 0, second.stderr
    log = git("--git-dir", remote, "log", "--format=%s", "main", env=env).splitlines()
    assert log[0] == "Second deploy"
    assert len(log) == 2
    cloned = clone(remote, tmp_path / "clone2", env)
    assert (cloned / "app.py").read_text().endswith("# v2\n")
    assert (cloned / "model" / "model.safetensors").read_bytes() == weights

    unchanged = deploy(*args, env=env)
    assert unchanged.returncode == 0, unchanged.stderr
    assert "nothing to deploy" in unchanged.stderr
    assert len(git("--git-dir", remote, "log", "--format=%s", "main", env=env).splitlines()) == 2


class _AuthRecorder(http.server.BaseHTTPRequestHandler):
    """A git HTTP remote that asks for credentials, records them and refuses everyone."""

    seen: ClassVar[list[str]] = []

    def do_GET(self):
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="hub"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def auth_server() -> Iterator[tuple[str, list[str]]]:
    _AuthRecorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthRecorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/spaces/owner/demo", _AuthRecorder.seen
    finally:
        server.shutdown()
        server.server_close()


@needs_git_lfs
def test_token_reaches_git_only_through_the_credential_helper(tmp_path, auth_server):
    url, seen = auth_server
    token = "hf_secretTOKENvalue123"
    # A git on PATH that records every git command line (git-lfs's too) before running git.
    argv_log = tmp_path / "argv.log"
    shim = tmp_path / "bin" / "git"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{argv_log}"\nexec "{GIT}" "$@"\n')
    shim.chmod(0o755)
    env = script_env(tmp_path, HF_TOKEN=token)
    env["PATH"] = f"{shim.parent}{os.pathsep}{env['PATH']}"
    spaces = tmp_path / "spaces"
    write_space(spaces / "demo")

    result = deploy("demo", "--spaces-dir", spaces, "--remote", url, env=env)

    assert result.returncode == 1
    assert f"cannot read {url}" in result.stderr
    expected = "Basic " + base64.b64encode(f"hf_user:{token}".encode()).decode()
    assert expected in seen  # the helper gave git the token ...
    assert "credential.helper" in argv_log.read_text()
    assert token not in argv_log.read_text()  # ... without it being on any command line
    assert token not in result.stdout + result.stderr


# --- End to end: the real Space, deployed, cloned and started outside the monorepo -----------


@pytest.mark.slow
@needs_git_lfs
def test_toxic_classifier_deploys_and_answers_from_its_clone(tmp_path, demo_models):
    env = script_env(tmp_path)
    model = Path(demo_models["toxic-classifier"]["MODEL_ID"])
    remote = bare_remote(tmp_path, env)
    result = deploy("toxic-classifier", "--remote", remote, "--include-model", model, env=env)
    assert result.returncode == 0, result.stderr

    # Clone it far from the monorepo, as the Hub's builder would.
    cloned = clone(remote, tmp_path / "deployed" / "toxic-classifier", env)
    assert not cloned.is_relative_to(ROOT)
    weights = cloned / "model" / "model.safetensors"
    assert not is_lfs_pointer(weights)
    assert weights.read_bytes() == (model / "model.safetensors").read_bytes()
    assert (cloned / "shared" / "__init__.py").is_file()

    # The venv has the monorepo's shared installed (editable): the clone must use its own copy.
    code = "import shared; print(shared.__file__)"
    which = subprocess.run(
        [sys.executable, "-c", code], cwd=cloned, capture_output=True, text=True, check=True
    )
    assert Path(which.stdout.strip()) == cloned / "shared" / "__init__.py"

    with start_space(
        "toxic-classifier", {"MODEL_ID": str(cloned / "model")}, space_dir=cloned
    ) as space:
        verdict = space.client.predict("نص", api_name="/predict")
    assert verdict["label"] in ("harmful", "safe")
    assert verdict["model"].startswith(str(cloned / "model"))  # the clone's own weights
