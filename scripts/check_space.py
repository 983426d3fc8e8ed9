"""Check a staged Space folder before it is pushed to the Hub.

``scripts/deploy_space.sh`` stages a Space (its files, the vendored ``shared/`` package, optionally
a model folder) and runs this on the staged folder. Every problem is printed on its own line as
``<file>: <what is wrong>``; the exit status is 1 when there is any, 0 otherwise.

Checks:
    - README.md front matter: title, emoji, colorFrom/colorTo, sdk (gradio | docker | static);
      gradio needs sdk_version and an existing app_file; docker needs an int app_port and a
      Dockerfile; short_description at most 60 characters.
    - requirements.txt: every requirement pinned with ``==``; no ``-r``/``-c``/``-e`` lines.
    - No file is a Git LFS pointer (the weights would never arrive).
    - Every weight-like file (standard LFS patterns, or bigger than 10 MB) is covered by a
      ``filter=lfs`` pattern in ``.gitattributes`` (the Hub rejects big files pushed without LFS).
    - Python files import only the standard library, third-party packages, ``shared`` and the
      Space's own modules: never ``tests``, ``scripts`` or another Space.

Usage:
    python scripts/check_space.py STAGED_DIR [--spaces-dir DIR --name SPACE]
    python scripts/check_space.py STAGED_DIR --list
    python scripts/check_space.py --print-gitattributes
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from shared.models import is_lfs_pointer

# The patterns of the .gitattributes the Hub writes into every new Space/model repo, plus gguf
# and the images and PDFs a Space ships as examples (the Hub refuses binary files pushed
# without LFS).
LFS_PATTERNS = (
    "*.7z",
    "*.arrow",
    "*.bin",
    "*.bz2",
    "*.ckpt",
    "*.ftz",
    "*.gguf",
    "*.gz",
    "*.h5",
    "*.jpeg",
    "*.jpg",
    "*.joblib",
    "*.lfs.*",
    "*.mlmodel",
    "*.model",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.onnx",
    "*.ot",
    "*.parquet",
    "*.pb",
    "*.pdf",
    "*.pickle",
    "*.pkl",
    "*.png",
    "*.pt",
    "*.pth",
    "*.rar",
    "*.safetensors",
    "saved_model/**/*",
    "*.tar.*",
    "*.tar",
    "*.tflite",
    "*.tif",
    "*.tiff",
    "*.tgz",
    "*.wasm",
    "*.webp",
    "*.xz",
    "*.zip",
    "*.zst",
    "*tfevents*",
)
LFS_ATTRIBUTES = "filter=lfs diff=lfs merge=lfs -text"
# The Hub refuses files above 10 MB that are not stored through LFS.
BIG_FILE_BYTES = 10 * 1024 * 1024

SDKS = ("gradio", "docker", "static")
COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
SHORT_DESCRIPTION_MAX = 60
# Top-level modules that exist only in the monorepo, never in a deployed Space.
MONOREPO_MODULES = ("tests", "scripts", "spaces", "conftest")
# Never part of the pushed tree (git metadata).
SKIP_DIRS = (".git",)

_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*"
    r"==\s*(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*)\s*(;.*)?$"
)
# Options that only change where pip looks; they pin nothing but are harmless.
_INDEX_OPTIONS = ("--index-url", "--extra-index-url", "-i", "--find-links", "-f")


def gitattributes_text() -> str:
    """The ``.gitattributes`` written into a staged Space that has none."""
    return "".join(f"{pattern} {LFS_ATTRIBUTES}\n" for pattern in LFS_PATTERNS)


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (sorted, relative), skipping git metadata."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP_DIRS or not path.is_file():
            continue
        yield rel


def _match(pattern: str, rel: Path) -> bool:
    """Whether a .gitattributes ``pattern`` (from the root file) covers ``rel``.

    Follows gitattributes' rules closely enough for LFS patterns: a pattern without a slash
    matches the file name at any depth; one with a slash matches the whole path from the root,
    with ``**/`` standing for any number of folders.
    """
    posix = rel.as_posix()
    pattern = pattern.removeprefix("/")
    if "/" not in pattern:
        return fnmatch.fnmatchcase(rel.name, pattern)
    if fnmatch.fnmatchcase(posix, pattern):
        return True
    # fnmatch's "*" already crosses "/", so "a/**/b" only needs the zero-folder case added.
    return "**/" in pattern and fnmatch.fnmatchcase(posix, pattern.replace("**/", ""))


def lfs_patterns(gitattributes: Path) -> list[str]:
    """The patterns of a ``.gitattributes`` that route files through LFS (``filter=lfs``)."""
    if not gitattributes.is_file():
        return []
    patterns = []
    for line in gitattributes.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def is_lfs_tracked(rel: Path, patterns: Iterable[str]) -> bool:
    """Whether ``rel`` matches one of the LFS ``patterns``."""
    return any(_match(p, rel) for p in patterns)


def _is_weight_like(root: Path, rel: Path) -> bool:
    return is_lfs_tracked(rel, LFS_PATTERNS) or (root / rel).stat().st_size > BIG_FILE_BYTES


@dataclass(frozen=True)
class Problem:
    """One thing that would break the deployed Space."""

    # Path relative to the staged folder ("." for the folder itself).
    file: str
    # What is wrong and, where it helps, what to do.
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def read_front_matter(readme: Path) -> dict[str, object]:
    """Parse the YAML front matter of a Space README.

    Raises:
        ValueError: No front matter, or it is not a YAML mapping.
    """
    text = readme.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise ValueError("no front matter: the file must start with a '---' line")
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    except StopIteration:
        raise ValueError("front matter is not closed by a '---' line") from None
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as e:
        raise ValueError(f"front matter is not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ValueError("front matter is not a YAML mapping of keys to values")
    return data


def check_front_matter(root: Path) -> list[Problem]:
    """Check README.md's Space configuration against what the Hub accepts."""
    readme = root / "README.md"
    if not readme.is_file():
        return [Problem("README.md", "missing: a Space needs a README.md with front matter")]
    try:
        meta = read_front_matter(readme)
    except ValueError as e:
        return [Problem("README.md", str(e))]

    problems: list[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem("README.md", message))

    for key in ("title", "emoji"):
        if not meta.get(key):
            problem(f"front matter: missing required key '{key}'")
    for key in ("colorFrom", "colorTo"):
        color = meta.get(key)
        if color is None:
            problem(f"front matter: missing required key '{key}' (one of {', '.join(COLORS)})")
        elif color not in COLORS:
            problem(f"front matter: {key} '{color}' is not one of {', '.join(COLORS)}")
    short = meta.get("short_description")
    if short is not None and len(str(short)) > SHORT_DESCRIPTION_MAX:
        problem(
            f"front matter: short_description is {len(str(short))} characters "
            f"(at most {SHORT_DESCRIPTION_MAX})"
        )
    for key in ("sdk_version", "python_version"):
        # YAML reads 3.10 as the float 3.1: the Hub then gets the wrong version.
        if key in meta and not isinstance(meta[key], str):
            problem(f'front matter: {key} must be a quoted string, e.g. {key}: "..."')

    sdk = meta.get("sdk")
    if sdk is None:
        problem(f"front matter: missing required key 'sdk' (one of {', '.join(SDKS)})")
    elif sdk not in SDKS:
        problem(f"front matter: sdk '{sdk}' is not one of {', '.join(SDKS)}")
    elif sdk == "gradio":
        if "sdk_version" not in meta:
            problem("front matter: missing required key 'sdk_version' (the Gradio version)")
        problems.extend(_check_app_file(root, meta.get("app_file"), required=True))
    elif sdk == "docker":
        port = meta.get("app_port")
        if port is None:
            problem("front matter: missing required key 'app_port' for a docker Space")
        elif not isinstance(port, int) or isinstance(port, bool):
            problem(f"front matter: app_port must be an integer, not {port!r}")
        if not (root / "Dockerfile").is_file():
            problems.append(Problem("Dockerfile", "missing: a docker Space needs a Dockerfile"))
    else:
        problems.extend(_check_app_file(root, meta.get("app_file", "index.html"), required=False))
    return problems


def _check_app_file(root: Path, app_file: object, *, required: bool) -> list[Problem]:
    if app_file is None:
        if required:
            return [Problem("README.md", "front matter: missing required key 'app_file'")]
        return []
    if not isinstance(app_file, str) or not (root / app_file).is_file():
        return [Problem("README.md", f"front matter: app_file '{app_file}' does not exist")]
    return []


def check_requirements(root: Path) -> list[Problem]:
    """Check that requirements.txt pins every requirement with ``==``."""
    path = root / "requirements.txt"
    if not path.is_file():
        return []
    problems = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        where = f"requirements.txt:{number}"
        if line.startswith("-"):
            if line.split()[0].split("=")[0] not in _INDEX_OPTIONS:
                problems.append(
                    Problem(where, f"'{line}' is not allowed: list pinned requirements only")
                )
            continue
        if not _REQUIREMENT.match(line):
            problems.append(Problem(where, f"'{line}' is not pinned: write name==version"))
    return problems


def check_gradio_pin(root: Path) -> list[Problem]:
    """A Gradio Space's requirements must not pin another Gradio than ``sdk_version``.

    The Hub installs ``gradio==sdk_version`` itself; a different pin replaces it at build time.
    """
    readme, reqs = root / "README.md", root / "requirements.txt"
    if not (readme.is_file() and reqs.is_file()):
        return []
    try:
        meta = read_front_matter(readme)
    except ValueError:
        return []  # reported by check_front_matter
    if meta.get("sdk") != "gradio" or "sdk_version" not in meta:
        return []
    for number, raw in enumerate(reqs.read_text(encoding="utf-8").splitlines(), 1):
        match = _REQUIREMENT.match(re.sub(r"(^|\s)#.*$", "", raw).strip())
        pinned = match["version"] if match and match["name"].lower() == "gradio" else None
        if pinned is not None and pinned != str(meta["sdk_version"]):
            return [
                Problem(
                    f"requirements.txt:{number}",
                    f"pins gradio=={pinned} but README sdk_version is "
                    f"{meta['sdk_version']}: make them equal (or drop the pin)",
                )
            ]
    return []


def check_lfs(root: Path) -> list[Problem]:
    """No LFS pointers, and every weight-like file is covered by an LFS pattern."""
    patterns = lfs_patterns(root / ".gitattributes")
    problems = []
    for rel in iter_files(root):
        path = root / rel
        if is_lfs_pointer(path):
            problems.append(
                Problem(
                    rel.as_posix(),
                    "is a Git LFS pointer, not the file's content: fetch the real file "
                    "(git lfs pull) before deploying",
                )
            )
        elif _is_weight_like(root, rel) and not is_lfs_tracked(rel, patterns):
            size_mb = path.stat().st_size / 1e6
            problems.append(
                Problem(
                    rel.as_posix(),
                    f"weight-like file ({size_mb:.1f} MB) not tracked by git-lfs: add a "
                    f"'<pattern> {LFS_ATTRIBUTES}' line to .gitattributes",
                )
            )
    return problems


def top_level_modules(folder: Path) -> set[str]:
    """Names importable from ``folder``: its ``*.py`` files and packages (dirs with .py files)."""
    if not folder.is_dir():
        return set()
    names = set()
    for child in folder.iterdir():
        if child.is_file() and child.suffix == ".py":
            names.add(child.stem)
        elif child.is_dir() and child.name.isidentifier() and any(child.glob("*.py")):
            names.add(child.name)
    return names


def other_space_modules(spaces_dir: Path, name: str) -> dict[str, str]:
    """Module name -> Space, for what the *other* Spaces under ``spaces_dir`` define."""
    found: dict[str, str] = {}
    if not spaces_dir.is_dir():
        return found
    for space in sorted(spaces_dir.iterdir()):
        if not space.is_dir() or space.name == name:
            continue
        found[space.name.replace("-", "_")] = space.name
        for module in top_level_modules(space):
            found.setdefault(module, space.name)
    return found


def _imports(tree: ast.AST) -> Iterator[tuple[int, str | None, int]]:
    """(line, module or None, relative level) for each import statement."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module, node.level


def check_imports(root: Path, others: dict[str, str] | None = None) -> list[Problem]:
    """Check that the Python files import nothing that will be missing once deployed.

    Args:
        root: The staged Space folder.
        others: Module name -> Space name for the other Spaces (see ``other_space_modules``).

    Returns:
        A problem for each import of ``tests``/``scripts``/another Space, and each import of a
        ``shared`` submodule that the vendored copy does not have.
    """
    others = others or {}
    local = top_level_modules(root)
    shared_dir = root / "shared"
    problems = []
    for rel in iter_files(root):
        if rel.suffix != ".py":
            continue
        try:
            tree = ast.parse((root / rel).read_bytes(), filename=str(rel))
        except SyntaxError as e:
            problems.append(Problem(rel.as_posix(), f"syntax error line {e.lineno}: {e.msg}"))
            continue
        for line, module, level in _imports(tree):
            where = f"{rel.as_posix()}:{line}"
            if level or module is None:
                continue  # relative imports stay inside their package
            head, _, rest = module.partition(".")
            if head == "shared":
                sub = rest.split(".")[0]
                exists = (shared_dir / f"{sub}.py").is_file() or (shared_dir / sub).is_dir()
                if sub and not exists:
                    problems.append(Problem(where, f"imports {module}, which shared/ lacks"))
                continue
            if head in local or head in sys.stdlib_module_names:
                continue
            if head in MONOREPO_MODULES:
                problems.append(
                    Problem(where, f"imports '{module}', which exists only in the monorepo")
                )
            elif head in others:
                problems.append(
                    Problem(
                        where,
                        f"imports '{module}' from the Space '{others[head]}': Spaces may only "
                        "share code through shared/",
                    )
                )
    return problems


def check_space(
    root: Path, spaces_dir: Path | None = None, name: str | None = None
) -> list[Problem]:
    """Run every check on a staged Space folder.

    Args:
        root: The staged folder (the tree that will be pushed).
        spaces_dir: The monorepo's ``spaces/`` folder, to recognise imports of other Spaces.
        name: The Space's own name under ``spaces_dir``.

    Returns:
        Every problem found, in a stable order; empty when the Space is ready to push.
    """
    others = other_space_modules(spaces_dir, name or root.name) if spaces_dir else {}
    return [
        *check_front_matter(root),
        *check_requirements(root),
        *check_gradio_pin(root),
        *check_lfs(root),
        *check_imports(root, others),
    ]


def list_files(root: Path) -> list[str]:
    """One line per file that would be pushed: ``lfs|git  size  path``."""
    patterns = lfs_patterns(root / ".gitattributes")
    lines = []
    for rel in iter_files(root):
        kind = "lfs" if is_lfs_tracked(rel, patterns) else "git"
        lines.append(f"{kind}  {(root / rel).stat().st_size:>12}  {rel.as_posix()}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("staged", nargs="?", type=Path, help="the staged Space folder")
    parser.add_argument("--spaces-dir", type=Path, help="the monorepo's spaces/ folder")
    parser.add_argument("--name", help="the Space's name under --spaces-dir")
    parser.add_argument("--list", action="store_true", help="list the files, do not check")
    parser.add_argument(
        "--print-gitattributes", action="store_true", help="print the default .gitattributes"
    )
    args = parser.parse_args(argv)
    if args.print_gitattributes:
        sys.stdout.write(gitattributes_text())
        return 0
    if args.staged is None:
        parser.error("STAGED is required")
    if not args.staged.is_dir():
        parser.error(f"{args.staged} is not a folder")
    if args.list:
        print("\n".join(list_files(args.staged)))
        return 0
    problems = check_space(args.staged, args.spaces_dir, args.name)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
