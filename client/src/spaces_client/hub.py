"""The Space's life on the Hub: its runtime stage, what each stage means, and waking it.

``HfApi.get_space_runtime`` reports the stage as a plain string: ``SLEEPING`` is not a
``SpaceStage`` member, so stages are compared as strings here.
"""

from __future__ import annotations

import logging

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from pydantic import SecretStr

from spaces_client.errors import SpaceNotFoundError

logger = logging.getLogger(__name__)

#: Asleep or stopped: a request (or restart_space with a write token) wakes it; then wait.
ASLEEP = frozenset({"SLEEPING", "STOPPED"})
#: On its way up: wait.
STARTING = frozenset({"BUILDING", "APP_STARTING", "RUNNING_BUILDING", "RUNNING_APP_STARTING"})
#: Serving (the app may still be loading its model).
RUNNING = frozenset({"RUNNING"})
#: It will not serve until someone acts: stage -> what to do.
BROKEN: dict[str, str] = {
    "PAUSED": "the owner paused it: restart it on its Settings page (or HfApi.restart_space "
    "with a write token)",
    "BUILD_ERROR": "its build failed: read the build logs on the Space page, fix the "
    "Dockerfile or requirements.txt and push",
    "RUNTIME_ERROR": "its app crashed at start: read the container logs on the Space page, fix "
    "the app and push or restart",
    "CONFIG_ERROR": "its README front matter is invalid: fix sdk/app_file/app_port and push",
    "NO_APP_FILE": "it has no app file: push app.py (or set app_file in the README front matter)",
    "DELETING": "it is being deleted: point the client at another Space",
}


def describe_stage(stage: str) -> str:
    """A short phrase for a stage, for errors and the check table."""
    if stage in ASLEEP:
        return f"{stage}: the client wakes it and waits"
    if stage in STARTING:
        return f"{stage}: the client waits"
    if stage in BROKEN:
        return f"{stage}: {BROKEN[stage]}"
    return stage


class HubRuntime:
    """Asks the Hub about Spaces (``HfApi(endpoint=...)``: tests point it at a local stand-in).

    Blocking calls: the client runs them in worker threads.

    Args:
        endpoint: The Hub API URL; huggingface_hub's default (``HF_ENDPOINT``) when None.
    """

    def __init__(self, endpoint: str | None = None) -> None:
        self.api = HfApi(endpoint=endpoint)

    def stage(self, repo_id: str, token: SecretStr | None = None) -> str | None:
        """The Space's runtime stage, or None when the Hub cannot be asked (unreachable,
        offline mode, rate-limited).

        Raises:
            SpaceNotFoundError: The Hub has no such Space (or it is private without a token).
        """
        try:
            runtime = self.api.get_space_runtime(repo_id, token=_token(token))
        except RepositoryNotFoundError as e:
            raise SpaceNotFoundError(
                "the Hub has no such Space (if it is private, set the token's env var named "
                "by `token_env`)",
                space=repo_id,
            ) from e
        except (HfHubHTTPError, OSError, ValueError) as e:
            logger.info("%s: cannot ask the Hub for the runtime: %s", repo_id, type(e).__name__)
            return None
        return str(getattr(runtime.stage, "value", runtime.stage))

    def restart(self, repo_id: str, token: SecretStr) -> bool:
        """``restart_space`` (owner's write token); False when the Hub refused it."""
        try:
            self.api.restart_space(repo_id, token=token.get_secret_value())
        except (HfHubHTTPError, OSError, ValueError) as e:
            logger.warning("%s: restart_space failed: %s", repo_id, type(e).__name__)
            return False
        logger.info("%s: restart requested", repo_id)
        return True


def _token(token: SecretStr | None) -> str | bool:
    # False: send no token at all (not the locally saved one) when none was configured.
    return token.get_secret_value() if token is not None else False
