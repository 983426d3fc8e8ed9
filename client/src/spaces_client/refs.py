"""Where a Space lives: ``owner/name``, ``https://huggingface.co/spaces/owner/name`` and
``https://owner-name.hf.space`` all resolve to the same :class:`SpaceRef`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_HUB_HOSTS = {"huggingface.co", "www.huggingface.co", "hf.co"}


@dataclass(frozen=True)
class SpaceRef:
    """A resolved Space."""

    # Base URL of the running app, without a trailing slash ("https://owner-name.hf.space").
    url: str
    # The Space's repo id on the Hub ("owner/name"), when known; None for a local URL.
    repo_id: str | None = None
    # Candidate repo ids for an ``*.hf.space`` host whose owner/name split is ambiguous
    # (both may contain "-"); the Hub tells which exists. Empty when repo_id is known.
    candidates: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How errors and the check table name the Space: its repo id, else its URL."""
        return self.repo_id or self.url

    @property
    def on_hub(self) -> bool:
        """Whether the Hub can be asked about this Space's runtime."""
        return self.repo_id is not None or bool(self.candidates)


def space_host(repo_id: str) -> str:
    """The ``*.hf.space`` host of a Space: ``owner-name`` lower-cased, ``_`` and ``.`` as ``-``."""
    owner, name = repo_id.split("/", 1)
    sub = re.sub(r"[._]", "-", f"{owner}-{name}").lower()
    return f"{sub}.hf.space"


def resolve_space(ref: str, repo_id: str | None = None) -> SpaceRef:
    """Resolve any way of naming a Space.

    Args:
        ref: ``owner/name``, ``https://huggingface.co/spaces/owner/name[/...]``,
            ``https://owner-name.hf.space`` or any other app URL (``http://127.0.0.1:7861``).
        repo_id: The Space's repo id when ``ref`` is a URL that does not say it (a local or
            custom-domain URL, or an ``*.hf.space`` host whose name had ``_`` or ``.``).

    Returns:
        The Space's app URL and repo id.

    Raises:
        ValueError: ``ref`` is none of these forms.
    """
    text = ref.strip()
    if repo_id is not None and not _REPO_ID.match(repo_id):
        raise ValueError(f"repo_id {repo_id!r} is not of the form owner/name")
    if _REPO_ID.match(text) and "://" not in text:
        return SpaceRef(url=f"https://{space_host(text)}", repo_id=text)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"cannot resolve Space {ref!r}: give owner/name, https://huggingface.co/spaces/"
            "owner/name, https://owner-name.hf.space or the app's http(s) URL"
        )
    host = parts.hostname or ""
    if host in _HUB_HOSTS:
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) < 3 or segments[0] != "spaces":
            raise ValueError(f"{ref!r} is not a Space page (https://huggingface.co/spaces/o/n)")
        found = f"{segments[1]}/{segments[2]}"
        return SpaceRef(url=f"https://{space_host(found)}", repo_id=found)
    url = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
    if host.endswith(".hf.space") and repo_id is None:
        sub = host.removesuffix(".hf.space")
        candidates = tuple(
            f"{sub[:i]}/{sub[i + 1 :]}"
            for i, c in enumerate(sub)
            if c == "-" and 0 < i < len(sub) - 1
        )
        if len(candidates) == 1:
            return SpaceRef(url=url, repo_id=candidates[0])
        return SpaceRef(url=url, candidates=candidates)
    return SpaceRef(url=url, repo_id=repo_id)
