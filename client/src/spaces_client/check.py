"""``spaces-client check``: for each configured Space, the Hub stage, ``/health`` and one
round-trip with its latency; a table, and whether any is down (and why)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence

import httpx

from spaces_client import hub as stages
from spaces_client._base import SpaceClient
from spaces_client.answer_sheet import AnswerSheetClient
from spaces_client.engine import SpacesClient
from spaces_client.errors import SpaceInputError, SpacesError
from spaces_client.models import Health, SpaceCheck
from spaces_client.spam import SpamClient
from spaces_client.tiers import TiersClient
from spaces_client.toxicity import ToxicityClient
from spaces_client.twi_speech import TwiSpeechClient

#: Kind -> typed client class.
CLIENTS: dict[str, type[SpaceClient]] = {
    "toxicity": ToxicityClient,
    "spam": SpamClient,
    "tiers": TiersClient,
    "answer_sheet": AnswerSheetClient,
    "twi_speech": TwiSpeechClient,
}


async def check_space(client: SpacesClient, key: str, *, timeout: float = 60.0) -> SpaceCheck:
    """Check one configured Space (on the client's loop: ``client.arun(check_space(...))``).

    Args:
        client: The client whose settings name the Space.
        key: The Space's key in the settings.
        timeout: Deadline of the round-trip in seconds.

    Returns:
        The table row; ``ok`` false with the ``reason`` when it is down.
    """
    state = client.space(key)
    kind = state.settings.kind or key
    row = SpaceCheck(key=key, kind=kind, url=state.ref.url)
    reasons: list[str] = []
    try:
        row.stage = await client.stage(state, fresh=True)
    except SpacesError as e:
        reasons.append(e.message)
    if row.stage in stages.BROKEN:
        reasons.append(stages.describe_stage(row.stage))
    try:
        response = await client._health(state, timeout=10)
        try:
            health = Health.model_validate(response.json())
            row.health = health.status
            row.models = health.models
            if health.status != "ok":
                reasons.append(f"/health: {health.status} {health.error or ''}".strip())
        except ValueError:
            row.health = f"HTTP {response.status_code}"
            reasons.append(
                f"/health answered HTTP {response.status_code} without the contract body"
            )
    except httpx.HTTPError as e:
        row.health = "no answer"
        reasons.append(f"/health: {type(e).__name__}")
    probe = CLIENTS[kind](state.settings, client=client).probe()
    start = time.perf_counter()
    try:
        end = asyncio.get_running_loop().time() + timeout
        async with asyncio.timeout(timeout):
            await client._primary(state, probe, end, own=False)
        row.latency_ms = (time.perf_counter() - start) * 1000
    except SpaceInputError:  # the Space answered (it refused the probe's input)
        row.latency_ms = (time.perf_counter() - start) * 1000
    except TimeoutError:
        reasons.append(f"round-trip: no answer in {timeout:g} s")
    except SpacesError as e:
        reasons.append(f"round-trip: {e.message}")
    row.ok = not reasons
    row.reason = "; ".join(reasons) or None
    return row


def check_all(
    client: SpacesClient, keys: Sequence[str] | None = None, *, timeout: float = 60.0
) -> list[SpaceCheck]:
    """Check every configured Space (or ``keys``) at once; one row each, in order."""
    names = list(keys) if keys else list(client.settings.spaces)

    async def run() -> list[SpaceCheck]:
        return list(await asyncio.gather(*(check_space(client, k, timeout=timeout) for k in names)))

    return client.run(run())


def table(rows: Sequence[SpaceCheck]) -> str:
    """The rows as a plain-text table."""
    header = [
        "space",
        "kind",
        "url",
        "stage",
        "health",
        "model",
        "revision",
        "demo",
        "device",
        "round-trip",
        "status",
    ]
    lines = [header]
    for row in rows:
        models = list(row.models.values())
        first = models[0] if models else None
        ids = Counter(str(m.id) for m in models)  # tiers sharing weights show their model once
        model = ", ".join(f"{i} (x{n})" if n > 1 else i for i, n in ids.items())
        lines.append(
            [
                row.key,
                row.kind,
                row.url,
                row.stage or "-",
                row.health or "-",
                model or "-",
                str(first.revision) if first and first.revision else "-",
                "yes" if first and first.demo else ("no" if first else "-"),
                (first.device or "-") if first else "-",
                f"{row.latency_ms:.0f} ms" if row.latency_ms is not None else "-",
                "ok" if row.ok else f"DOWN: {row.reason}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])] + [line[-1]]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(out)
