"""What every typed client shares: binding to a Space of the process-wide client, running a
request sync or async, and file inputs."""

from __future__ import annotations

import mimetypes
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

from pydantic import BaseModel

from spaces_client.config import FallbackSettings, SpaceSettings
from spaces_client.engine import Request, SpacesClient, SpaceState

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

#: A file given to a client: a path, its bytes, or an open binary file.
FileInput = str | os.PathLike[str] | bytes | IO[bytes]

_default: SpacesClient | None = None
_default_lock = threading.Lock()


def default_client() -> SpacesClient:
    """The process-wide client that typed clients use when none is given (configured from the
    environment on first use: ``SPACES_CLIENT_CONFIG``, ``SPACES_<KIND>``, ...)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SpacesClient.from_env()
        return _default


class SpaceClient:
    """Base of the typed clients.

    Args:
        space: The Space: a key of the client's settings, ``owner/name`` or any URL form, or
            its ``SpaceSettings``; the settings' entry for this client's kind when None.
        client: The process's ``SpacesClient``; :func:`default_client` when None.
        fallbacks: Fallbacks for a Space given by name or URL (``FallbackSettings`` or dicts).
        **settings: Other ``SpaceSettings`` fields for a Space given by name or URL
            (``deadline_s``, ``repo_id``, ``write_token_env``, ...).
    """

    kind: ClassVar[str]

    def __init__(
        self,
        space: str | SpaceSettings | None = None,
        *,
        client: SpacesClient | None = None,
        fallbacks: Sequence[FallbackSettings | dict[str, Any]] = (),
        **settings: Any,
    ) -> None:
        self.client = client or default_client()
        if space is None:
            self.state = self.client.space(self.kind)
        elif isinstance(space, SpaceSettings) or space in self.client.settings.spaces:
            self.state = self.client.space(space)
        else:
            built = SpaceSettings(
                space=space,
                kind=self.kind,  # type: ignore[arg-type]
                fallbacks=[FallbackSettings.model_validate(f) for f in fallbacks],
                **settings,
            )
            self.state = self.client.space(built)

    @property
    def url(self) -> str:
        """The Space's app URL."""
        return self.state.ref.url

    def _run(
        self, request: Request[T], timeout: float | None, state: SpaceState | None = None
    ) -> T:
        return self.client.call(state or self.state, request, timeout)

    async def _arun(
        self, request: Request[T], timeout: float | None, state: SpaceState | None = None
    ) -> T:
        return await self.client.acall(state or self.state, request, timeout)

    def probe(self) -> Request[Any]:
        """The request ``spaces-client check`` sends as its round-trip."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def validator(model: type[M]) -> Callable[[Any], M]:
    """A parser that accepts the model itself or a dict of its fields."""

    def parse(value: Any) -> M:
        return value if isinstance(value, model) else model.model_validate(value)

    return parse


@dataclass(frozen=True)
class FilePart:
    """A file read into memory for one call."""

    # File name sent to the Space.
    name: str
    # Its bytes.
    data: bytes
    # Content type.
    content_type: str
    # The file on disk, when it was given as a path.
    path: str | None = None

    def multipart(self) -> tuple[str, bytes, str]:
        """The ``(name, bytes, type)`` tuple of a multipart upload."""
        return (self.name, self.data, self.content_type)


def read_file(value: FileInput, default_name: str) -> FilePart:
    """Read a path, bytes or binary file object given to a client.

    Raises:
        ValueError: The path does not exist or the value is none of these.
    """
    if isinstance(value, bytes | bytearray):
        name = default_name
        data, path = bytes(value), None
    elif isinstance(value, str | os.PathLike):
        file = Path(value)
        if not file.is_file():
            raise ValueError(f"no such file: {file}")
        name, data, path = file.name, file.read_bytes(), str(file)
    elif hasattr(value, "read"):
        data = value.read()
        if not isinstance(data, bytes):
            raise ValueError("open the file in binary mode ('rb')")
        name = Path(getattr(value, "name", default_name) or default_name).name
        path = None
    else:
        raise ValueError(f"expected a path, bytes or a binary file, got {type(value).__name__}")
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FilePart(name, data, content_type, path)


@contextmanager
def on_disk(parts: Sequence[FilePart]) -> Iterator[list[str]]:
    """Paths of the files for gradio_client's ``handle_file`` (bytes go to a temp folder that
    is removed after the call)."""
    with tempfile.TemporaryDirectory(prefix="spaces-client-") as folder:
        paths = []
        for i, part in enumerate(parts):
            if part.path is not None:
                paths.append(part.path)
                continue
            target = Path(folder) / f"{i}-{part.name}"
            target.write_bytes(part.data)
            paths.append(str(target))
        yield paths
