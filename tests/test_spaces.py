"""Every Space under spaces/ is a valid Hub Space repository.

It names the installed Gradio; its requirements are pinned to the versions of the monorepo's
lock file; a Docker Space follows HF's Docker layout. The serving contract (health, stats,
predict, errors, bad configuration) is checked by ``tests/test_contract.py``; the deploy checks
(front matter, pins, LFS, imports nothing outside its folder but ``shared``) run on every Space
through the dry runs in ``tests/test_deploy.py``.
"""

from __future__ import annotations

import re
import tomllib

import pytest

from scripts.check_space import read_front_matter
from tests.harness import ROOT, SPACES_DIR, space_names

SPACES = space_names()


def locked_versions() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"] if "version" in p}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_there_are_spaces():
    assert "toxic-classifier" in SPACES


@pytest.mark.parametrize("name", SPACES)
def test_requirements_match_the_lock(name):
    locked = locked_versions()
    mismatched = []
    for line in (SPACES_DIR / name / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        package, _, version = line.partition("==")
        package = canonical(package.split("[", 1)[0])
        if locked.get(package) != version.strip():
            mismatched.append(f"{line} (lock: {locked.get(package, 'absent')})")
    assert mismatched == []


@pytest.mark.parametrize("name", SPACES)
def test_front_matter_names_the_installed_gradio(name):
    meta = read_front_matter(SPACES_DIR / name / "README.md")
    if meta["sdk"] == "gradio":
        assert str(meta["sdk_version"]) == locked_versions()["gradio"]
    else:
        assert meta["sdk"] == "docker"
        assert meta.get("app_port", 7860) == 7860


@pytest.mark.parametrize("name", SPACES)
def test_dockerfile_follows_the_docker_space_layout(name):
    """No Docker engine runs here: check the file statically against HF's documented layout."""
    meta = read_front_matter(SPACES_DIR / name / "README.md")
    if meta["sdk"] != "docker":
        pytest.skip("not a Docker Space")
    lines = [
        line.strip()
        for line in (SPACES_DIR / name / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0].startswith("FROM python:3.11")
    assert any(re.search(r"useradd .*-u 1000 user", line) for line in lines)
    assert "USER user" in lines
    assert any(line.startswith("WORKDIR") and "/app" in line for line in lines)
    assert any(line.startswith("COPY --chown=user . ") for line in lines)
    assert f"EXPOSE {meta.get('app_port', 7860)}" in lines
    assert lines[-1] in ('CMD ["python", "app.py"]', "CMD python app.py")
    assert lines.index("USER user") < next(i for i, x in enumerate(lines) if "pip install" in x)


@pytest.mark.parametrize("name", SPACES)
def test_readme_documents_predict_and_health(name):
    readme = (SPACES_DIR / name / "README.md").read_text()
    assert 'api_name="/predict"' in readme
    assert "/health" in readme
    assert "curl" in readme
