"""A local stand-in of the Hub's Space runtime API (``HfApi(endpoint=...)`` points at it).

``GET /api/spaces/{owner}/{name}/runtime`` answers the stage it holds; ``POST .../restart``
starts the walk ``APP_STARTING`` -> ``RUNNING``. A Space stays ``PAUSED`` or ``RUNTIME_ERROR``
when set so (restart has no effect then unless ``heal_on_restart``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse


class FakeHub:
    """Stages by repo id, with timed transitions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, str] = {}
        self._walks: dict[str, list[tuple[float, str]]] = {}
        self.restarts: dict[str, int] = {}
        self.runtime_calls = 0
        self.heal_on_restart = False
        self.app = self._build()

    def set(self, repo_id: str, stage: str) -> None:
        with self._lock:
            self._stages[repo_id] = stage
            self._walks.pop(repo_id, None)

    def walk(self, repo_id: str, steps: list[tuple[float, str]]) -> None:
        """From now, after each delay (seconds, cumulative) go to the stage."""
        now = time.monotonic()
        at, plan = now, []
        for delay, stage in steps:
            at += delay
            plan.append((at, stage))
        with self._lock:
            self._walks[repo_id] = plan

    def stage(self, repo_id: str) -> str | None:
        with self._lock:
            now = time.monotonic()
            plan = self._walks.get(repo_id, [])
            while plan and plan[0][0] <= now:
                self._stages[repo_id] = plan.pop(0)[1]
            return self._stages.get(repo_id)

    def wake(self, repo_id: str, starting_s: float) -> None:
        """What a visit or a restart does to a sleeping Space."""
        if self.stage(repo_id) in ("SLEEPING", "STOPPED"):
            self.set(repo_id, "APP_STARTING")
            self.walk(repo_id, [(starting_s, "RUNNING")])

    def _build(self) -> FastAPI:
        app = FastAPI()
        hub = self

        def body(stage: str) -> dict[str, Any]:
            return {
                "stage": stage,
                "hardware": {"current": "cpu-basic", "requested": "cpu-basic"},
                "storage": None,
                "gcTimeout": 172800,
                "replicas": {"current": 1},
            }

        @app.get("/api/spaces/{owner}/{name}/runtime")
        def runtime(owner: str, name: str) -> Any:
            hub.runtime_calls += 1
            stage = hub.stage(f"{owner}/{name}")
            if stage is None:
                return JSONResponse(
                    {"error": "Repository not found"}, 404, headers={"X-Error-Code": "RepoNotFound"}
                )
            return body(stage)

        @app.post("/api/spaces/{owner}/{name}/restart")
        def restart(owner: str, name: str) -> Any:
            repo = f"{owner}/{name}"
            hub.restarts[repo] = hub.restarts.get(repo, 0) + 1
            stage = hub.stage(repo)
            if stage is None:
                return JSONResponse(
                    {"error": "Repository not found"}, 404, headers={"X-Error-Code": "RepoNotFound"}
                )
            if stage in ("SLEEPING", "STOPPED") or hub.heal_on_restart:
                hub.set(repo, "APP_STARTING")
                hub.walk(repo, [(hub.restart_starting_s, "RUNNING")])
            return body(hub.stage(repo) or "RUNNING")

        return app

    restart_starting_s = 1.0
