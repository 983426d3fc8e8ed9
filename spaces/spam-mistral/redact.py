"""Take working contact points out of simulated scam messages.

A simulated scammer's reply must not carry a link, phone number, e-mail address, account or card
number, crypto wallet or messenger handle that works: someone practising on the simulator could
follow it, and a reply copied elsewhere would be a real scam message. :func:`redact` replaces
each with a placeholder (``[LINK]``, ``[PHONE]``, ...). It errs on the side of replacing: a
harmless ``file.txt`` becomes ``[LINK]``; a working number never survives.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

__all__ = ["PLACEHOLDERS", "Redacted", "redact"]

_DIGIT = r"[0-9\u0660-\u0669\u06f0-\u06f9]"  # ASCII, Arabic-Indic and Extended Arabic-Indic
# Common generic top-level domains; any two-letter one is a country code.
_GTLDS = (
    "com|net|org|info|biz|xyz|top|site|online|link|click|app|io|co|me|tv|cc|ws|shop|store|"
    "live|life|club|vip|win|bid|loan|work|money|pro|mobi|name|tech|digital|support|help|"
    "services|email|today|news|world|asia|global|finance|bank|pay|gov|edu"
)

# (placeholder, pattern), applied in this order: an e-mail address is not also a link, and a
# card or IBAN is not also a phone number.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # Bounded repeats (a local part is at most 64 characters, a host name has at most 10
    # labels here) keep each pattern linear: redaction runs on every streamed token with the
    # GIL held, and an unbounded one took seconds on a generated "a.a.a.…".
    ("[EMAIL]", re.compile(r"[\w.+-]{1,64}@[\w-]+(?:\.[\w-]+)+")),
    (
        "[LINK]",
        re.compile(
            r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"']+"
            rf"|\b(?:[a-z0-9](?:[a-z0-9-]{{0,61}}[a-z0-9])?\.){{1,10}}(?:{_GTLDS}|[a-z]{{2}})\b"
            r"(?:[/?#][^\s<>\"']*)?",
            re.IGNORECASE,
        ),
    ),
    ("[WALLET]", re.compile(r"\b0x[0-9a-fA-F]{40}\b|\b(?:bc1|[13])[a-km-zA-HJ-NP-Z1-9]{25,59}\b")),
    ("[IBAN]", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")),
    ("[CARD]", re.compile(rf"(?<!{_DIGIT})(?:{_DIGIT}[ -]?){{12,18}}{_DIGIT}(?!{_DIGIT})")),
    (
        "[PHONE]",
        re.compile(
            rf"(?<![\w+(])(?:\+|00)?\(?{_DIGIT}(?:[\s().-]{{0,2}}{_DIGIT}){{6,40}}(?!{_DIGIT})"
        ),
    ),
    ("[HANDLE]", re.compile(r"(?<![\w@])@[A-Za-z0-9_]{4,32}\b")),
)

#: Every placeholder :func:`redact` writes.
PLACEHOLDERS: tuple[str, ...] = tuple(placeholder for placeholder, _ in _RULES)


@dataclass(frozen=True)
class Redacted:
    """A text with its contact points replaced."""

    # The text with placeholders in place of contact points.
    text: str
    # How many of each placeholder were put in, e.g. {"[LINK]": 1}.
    replaced: dict[str, int]


def redact(text: str) -> Redacted:
    """Replace links, e-mail addresses, phone, card and IBAN numbers, wallets and handles.

    Args:
        text: A generated reply.

    Returns:
        The text with placeholders, and what was replaced. Idempotent: redacting the result
        again changes nothing.
    """
    counts: Counter[str] = Counter()
    for placeholder, pattern in _RULES:
        text, n = pattern.subn(placeholder, text)
        if n:
            counts[placeholder] += n
    return Redacted(text, dict(counts))
