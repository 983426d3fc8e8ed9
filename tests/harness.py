"""The Space launcher, as the tests use it (see ``scripts/launcher.py``)."""

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
    "space_names",
    "start_space",
]
