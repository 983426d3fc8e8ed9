"""The Space launcher, as the tests use it (see ``scripts/launcher.py``), and module isolation."""

from __future__ import annotations

import sys
from pathlib import Path

from scripts.launcher import (
    DEMO_MODELS_DIR,
    ROOT,
    SPACES_DIR,
    RunningSpace,
    demo_env,
    free_port,
    space_names,
    start_space,
)

__all__ = [
    "DEMO_MODELS_DIR",
    "ROOT",
    "SPACES_DIR",
    "RunningSpace",
    "demo_env",
    "free_port",
    "isolate_space_modules",
    "space_names",
    "start_space",
]


def isolate_space_modules(space_dir: Path) -> None:
    """Make ``import predictor`` (``app``, ``api``, ``ui``, ...) mean this Space's module.

    Every Space has the same layout, so two Spaces' tests in one pytest run import modules of
    the same names from different folders. Put ``space_dir`` first on ``sys.path`` and forget
    the modules that came from another Space's folder. The root ``conftest.py`` calls this
    before each Space test module is imported and before each of its tests runs.
    """
    folder = str(space_dir)
    if sys.path[0] != folder:
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if not origin:
            continue
        home = Path(origin).parent  # a Space's own module lies directly in its folder
        if home.parent == SPACES_DIR and home != Path(space_dir):
            del sys.modules[name]
