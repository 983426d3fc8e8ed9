"""The ``spaces-client`` command: ``spaces-client check`` tests the connection to every
configured Space and exits 1 if any is down."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from spaces_client.config import KINDS, ClientSettings, SpaceSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spaces-client",
        description="Backend client for this repo's Hugging Face Spaces.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check",
        help="test the connection to each configured Space",
        description=(
            "For each configured Space: its stage on the Hub, GET /health (model, revision, "
            "demo, device) and one round-trip with its latency, as a table. Exit status 1 if "
            "any is down. Spaces come from --config, $SPACES_CLIENT_CONFIG, $SPACES_<KIND> and "
            "--space; tokens only from the environment variables the configuration names."
        ),
    )
    check.add_argument("--config", help="YAML settings file (default: $SPACES_CLIENT_CONFIG)")
    check.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="KIND=SPACE",
        help=f"add a Space: KIND is one of {', '.join(KINDS)}; SPACE is owner/name or a URL "
        "(repeatable)",
    )
    check.add_argument("--hub-endpoint", help="Hub API URL (default: huggingface.co)")
    check.add_argument("--timeout", type=float, default=60.0, help="round-trip deadline, s")
    check.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    check.add_argument("-v", "--verbose", action="store_true", help="log retries")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from spaces_client.check import check_all, table
    from spaces_client.engine import SpacesClient

    environ = dict(os.environ)
    if args.config:
        environ["SPACES_CLIENT_CONFIG"] = args.config
    try:
        settings = ClientSettings.from_env(environ)
        for item in args.space:
            kind, sep, ref = item.partition("=")
            if not sep or kind not in KINDS:
                raise ValueError(f"--space {item!r}: expected KIND=SPACE, KIND one of {KINDS}")
            settings.spaces[kind] = SpaceSettings(space=ref, kind=kind)  # type: ignore[arg-type]
        if args.hub_endpoint:
            settings.hub_endpoint = args.hub_endpoint
    except ValueError as e:
        print(f"spaces-client: {e}", file=sys.stderr)
        return 2
    if not settings.spaces:
        print(
            "spaces-client: no Spaces configured: give --space KIND=SPACE, --config FILE or "
            "SPACES_<KIND>=owner/name",
            file=sys.stderr,
        )
        return 2
    with SpacesClient(settings, environ=environ) as client:
        rows = check_all(client, timeout=args.timeout)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
    else:
        print(table(rows))
    down = [r for r in rows if not r.ok]
    for row in down:
        print(f"{row.key} is down: {row.reason}", file=sys.stderr)
    return 1 if down else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
