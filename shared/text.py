"""Unicode cleanup, length limits and AraBERT-style Arabic normalisation for user text.

Every Space that takes free text calls :func:`check_text` at its edge, so the model sees the same
cleaned string whatever the client sent; Arabic models then apply :func:`normalize_arabic` with
the steps their checkpoint was trained with.

Every function here is idempotent (``f(f(x)) == f(x)``): a text that went through a Space's
preprocessing once, and is sent back to it, is not changed a second time.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, fields

from shared.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "ARABIC_PLACEHOLDERS",
    "ArabicNormalization",
    "TextInputError",
    "TextLimits",
    "check_text",
    "clean_text",
    "normalize_arabic",
]

_URL_TOKEN = "[رابط]"
_EMAIL_TOKEN = "[بريد]"
_MENTION_TOKEN = "[مستخدم]"
#: The tokens :func:`normalize_arabic` puts in place of URLs, e-mail addresses and @mentions
#: (AraBERT's vocabulary has them; add them to a tokenizer's ``never_split`` if it has not).
ARABIC_PLACEHOLDERS: tuple[str, ...] = (_URL_TOKEN, _EMAIL_TOKEN, _MENTION_TOKEN)

# --- clean_text ---------------------------------------------------------------------------------

# Control (Cc, except whitespace, which is collapsed instead), surrogate (Cs) and format (Cf)
# characters that carry no meaning in running text: zero-width space, BOM, soft hyphen, bidi
# controls, Arabic letter mark, invisible operators, ... Hard-coded because scanning unicodedata
# at import costs half a second; a test checks this list against the running Unicode database.
# Kept: ZWNJ (U+200C, Persian/Urdu spelling), ZWJ (U+200D) and tag characters (U+E0020-E007F),
# which _JOINERS keeps only where they mean something.
_INVISIBLE = re.compile(
    r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891"
    r"\u08e2\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    r"\ud800-\udfff\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    r"\U0001d173-\U0001d17a\U000e0001]+"
)
# Pictographs and the marks that modify them (VS16, keycap, skin tones, flag tags).
_EMOJI = (
    r"\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a-\u23ff\u24c2"
    r"\u25aa-\u27bf\u2934\u2935\u2b05-\u2b55\u3030\u303d\u3297\u3299\U0001f000-\U0001faff"
)
_EMOJI_MODIFIER = r"\ufe0f\u20e3\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f"
_FLAG = r"[\U0001f1e6-\U0001f1ff]{2}"  # a pair of regional indicators: 🇸🇦
# One emoji as the reader sees it: a flag, a ZWJ sequence such as 👨‍👩‍👧, a tagged flag.
_EMOJI_CLUSTER = (
    f"(?:{_FLAG}|[{_EMOJI}])[{_EMOJI_MODIFIER}]*(?:\u200d[{_EMOJI}][{_EMOJI_MODIFIER}]*)*"
)
# Emoji clusters are matched first and kept whole; a ZWJ or tag left outside one is dropped,
# and a ZWNJ is judged by its neighbours in _keep_joiner.
_JOINERS = re.compile(f"(?P<emoji>{_EMOJI_CLUSTER})|\u200c|[\u200d\U000e0020-\U000e007f]")
_WHITESPACE = re.compile(r"\s+")


def _keep_joiner(match: re.Match[str]) -> str:
    if match.group("emoji") is not None:
        return match.group()
    if match.group() != "\u200c":
        return ""
    # A ZWNJ means something only inside a word: after a letter, digit or mark, before a letter
    # or digit. Neither neighbour can be removed by this substitution, which keeps it stable.
    text, start, end = match.string, match.start(), match.end()
    before = unicodedata.category(text[start - 1])[0] if start > 0 else ""
    after = unicodedata.category(text[end])[0] if end < len(text) else ""
    return match.group() if before in ("L", "N", "M") and after in ("L", "N") else ""


def clean_text(text: str) -> str:
    """Clean user text in any language without changing what it says.

    Applies NFKC (which folds Arabic presentation forms, full-width Latin and ligatures to their
    base letters), drops invisible control and format characters (zero-width space, BOM, bidi
    controls, ...) while keeping ZWNJ inside words and ZWJ inside emoji sequences, collapses every
    run of whitespace to one space and strips the ends. Idempotent, and never raises on a ``str``.

    Args:
        text: Any string, including lone surrogates and control characters.

    Returns:
        The cleaned text; empty if ``text`` held nothing visible.
    """
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text)
    text = _JOINERS.sub(_keep_joiner, text)
    # Removing a character can bring a letter next to a mark it composes with (alef + hamza).
    text = unicodedata.normalize("NFKC", text)
    return _WHITESPACE.sub(" ", text).strip()


# --- check_text ---------------------------------------------------------------------------------


class TextInputError(InputError):
    """User text that is not a string, is empty, or is longer than the Space accepts."""


# Raw input longer than this many times the limit is refused before it is cleaned, so a
# megabyte payload costs nothing; cleaning shrinks whitespace runs, never by that much in practice.
_RAW_LENGTH_FACTOR = 4


@dataclass(frozen=True)
class TextLimits:
    """How much text a Space accepts, counted in characters after :func:`clean_text`."""

    max_chars: int  # longest accepted text
    min_chars: int = 1  # shortest accepted text; 1 only refuses empty input

    def __post_init__(self) -> None:
        if not 1 <= self.min_chars <= self.max_chars:
            raise ValueError(
                f"TextLimits needs 1 <= min_chars <= max_chars, "
                f"got min_chars={self.min_chars}, max_chars={self.max_chars}"
            )


def check_text(text: object, limits: TextLimits, *, field: str = "text") -> str:
    """Validate a user's text payload and return it cleaned.

    Args:
        text: The payload as received (anything JSON can carry).
        limits: The Space's length limits.
        field: The name of the input, used in error messages.

    Returns:
        ``clean_text(text)``, which is between ``limits.min_chars`` and ``limits.max_chars``
        characters long.

    Raises:
        TextInputError: ``text`` is not a string, is empty or whitespace only, or its length is
            outside the limits; the message names the limit.
    """
    if not isinstance(text, str):
        raise TextInputError(f"{field} must be a string, got {type(text).__name__}")
    if len(text) > _RAW_LENGTH_FACTOR * limits.max_chars:
        raise TextInputError(_too_long(field, len(text), limits))
    cleaned = clean_text(text)
    if not cleaned:
        raise TextInputError(f"{field} is empty")
    if len(cleaned) > limits.max_chars:
        raise TextInputError(_too_long(field, len(cleaned), limits))
    if len(cleaned) < limits.min_chars:
        raise TextInputError(
            f"{field} is {len(cleaned):,} characters; the minimum is {limits.min_chars:,}"
        )
    return cleaned


def _too_long(field: str, length: int, limits: TextLimits) -> str:
    return f"{field} is {length:,} characters; the limit is {limits.max_chars:,}"


# --- normalize_arabic ---------------------------------------------------------------------------

# Harakat U+064B-0652 (tanween, fatha, damma, kasra, shadda, sukun), the extended harakat
# U+0656-065F, superscript alef U+0670, and the Quranic annotation marks. Maddah and hamza above
# and below (U+0653-0655) are parts of letters (آ أ إ ؤ ئ), not tashkeel, and stay.
_TASHKEEL = re.compile(
    r"[\u0610-\u061a\u064b-\u0652\u0656-\u065f\u0670\u06d6-\u06dc\u06df-\u06e4\u06e7\u06e8"
    r"\u06ea-\u06ed\u08d3-\u08e1\u08e3-\u08ff]+"
)
_TATWEEL = re.compile("\u0640+")
_EASTERN_DIGITS = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "0123456789" * 2)

# Every match of these three contains "@", "." or ":", and no placeholder does: that bounds the
# loop in _replace_entities. None of them can match across whitespace. The local part is
# bounded (64 characters, as in RFC 5321): unbounded, the search backtracks over the rest of the
# word at every position, 1.5 s of held GIL on a 20,000-character word without an "@".
_EMAIL = re.compile(r"[\w.+-]{1,64}@[\w-]+(?:\.[\w-]+)+")
_URL_END = r"""[^\s<>"'.,;:!?)\]}»،؛؟]"""  # sentence punctuation after a URL is not part of it
_URL = re.compile(
    rf"""(?:(?:https?|ftp)://|www\.)[^\s<>"]*{_URL_END}"""
    r"|(?<![\w@.-])(?:[a-z0-9-]+\.)+"
    r"(?:com|net|org|edu|gov|info|biz|io|co|me|ly|app|dev|ai|tv|uk|de|fr|ru"
    r"|sa|ae|eg|ma|dz|tn|qa|kw|bh|om|jo|lb|iq|ps|sy|ye|sd)\b"
    rf"""(?:/[^\s<>"]*{_URL_END})?""",
    re.IGNORECASE,
)
_MENTION = re.compile(r"@\w+")

# A run of one character other than a digit (1000 is a number, not an elongation) or whitespace.
_REPEAT = re.compile(r"([^\d\s])\1+")

# What space_punctuation isolates, first match wins: a placeholder (kept whole, so "[رابط]" is
# never split into "[ رابط ]"), a keycap (#️⃣), an emoji cluster (👨‍👩‍👧 keeps its joiners), or
# any other single character that is not a letter, digit or space; _space_unit only spaces the
# punctuation (P*) and symbols (S*) among the latter, not combining marks or format characters.
_PLACEHOLDER = "|".join(re.escape(token) for token in ARABIC_PLACEHOLDERS)
_SPACED_UNIT = re.compile(
    f"{_PLACEHOLDER}|[#*0-9]\ufe0f?\u20e3|{_EMOJI_CLUSTER}|[^\\w\\s]|_",
)


@dataclass(frozen=True)
class ArabicNormalization:
    """Which AraBERT v02 preprocessing steps :func:`normalize_arabic` applies.

    The defaults are the v02 set (aub-mind/arabert ``preprocess.py``). Alef, ya and ta marbuta
    variants are never unified: v02 does not, so its vocabulary keeps them apart.
    """

    strip_tashkeel: bool = True  # drop harakat, shadda, sukun, tanween, dagger alef, Quranic marks
    strip_tatweel: bool = True  # drop the kashida U+0640 that stretches words ("أكرهـــه")
    replace_urls: bool = True  # URLs (scheme, www. or a known top-level domain) -> [رابط]
    replace_emails: bool = True  # e-mail addresses -> [بريد]
    replace_mentions: bool = True  # @user -> [مستخدم]
    max_repeats: int = 2  # squeeze runs of one non-digit character longer than this; 0 disables
    space_punctuation: bool = True  # one space around punctuation, symbols and emoji
    eastern_digits: bool = True  # Arabic-Indic (U+0660..) and Persian (U+06F0..) digits -> 0-9

    def __post_init__(self) -> None:
        for option in fields(self):
            value = getattr(self, option.name)
            if option.name == "max_repeats":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(
                        f"max_repeats must be a non-negative integer (0 disables), got {value!r}"
                    )
            elif not isinstance(value, bool):
                raise ValueError(f"{option.name} must be true or false, got {value!r}")

    @classmethod
    def arabert_v02(cls) -> ArabicNormalization:
        """Return the AraBERT v02 step set (all steps on, runs squeezed to 2)."""
        return cls()

    @classmethod
    def none(cls) -> ArabicNormalization:
        """Return a set with every step off: :func:`normalize_arabic` only runs ``clean_text``."""
        return cls(
            strip_tashkeel=False,
            strip_tatweel=False,
            replace_urls=False,
            replace_emails=False,
            replace_mentions=False,
            max_repeats=0,
            space_punctuation=False,
            eastern_digits=False,
        )

    @classmethod
    def from_dict(cls, options: Mapping[str, object]) -> ArabicNormalization:
        """Build a step set from a Space's config, starting from the AraBERT v02 defaults.

        Args:
            options: Step names to values, e.g. ``{"strip_tashkeel": False, "max_repeats": 3}``.

        Returns:
            The v02 defaults with the given steps overridden.

        Raises:
            ValueError: A key is not a step name (the message lists the valid ones) or a value
                has the wrong type.
        """
        valid = [option.name for option in fields(cls)]
        unknown = sorted(str(key) for key in options if key not in valid)
        if unknown:
            raise ValueError(
                f"unknown Arabic normalisation option(s) {unknown}; valid options are {valid}"
            )
        return cls(**{str(key): value for key, value in options.items()})


_ARABERT_V02 = ArabicNormalization.arabert_v02()


def normalize_arabic(text: str, options: ArabicNormalization = _ARABERT_V02) -> str:
    """Normalise Arabic (or mixed Arabic/Latin/emoji) text the way AraBERT v02 was pre-trained.

    Runs :func:`clean_text`, then the steps switched on in ``options``: strip tashkeel and
    tatweel, map Eastern digits to ASCII, replace e-mails, URLs and mentions by placeholder
    tokens, squeeze repeated characters, and space out punctuation. Idempotent for every
    ``options``, and never raises on a ``str``.

    Args:
        text: Any string.
        options: Which steps to apply; AraBERT v02's by default.

    Returns:
        The normalised text, whitespace-collapsed and stripped.
    """
    text = clean_text(text)
    if options.strip_tashkeel or options.strip_tatweel:
        if options.strip_tashkeel:
            text = _TASHKEEL.sub("", text)
        if options.strip_tatweel:
            text = _TATWEEL.sub("", text)
        # A removed mark or kashida can unblock a composition or strand a ZWNJ.
        text = clean_text(text)
    if options.eastern_digits:
        text = text.translate(_EASTERN_DIGITS)
    text = _replace_entities(text, options)
    if options.max_repeats:
        squeezed = _squeeze(text, options.max_repeats)
        if squeezed != text:
            # Squeezing can complete an entity ("htttps://x" -> "https://x").
            text = _replace_entities(squeezed, options)
    if options.space_punctuation:
        text = _SPACED_UNIT.sub(_space_unit, text)
    # Placeholders and spaces can strand a ZWNJ; this also collapses the added spaces.
    return clean_text(text)


def _replace_entities(text: str, options: ArabicNormalization) -> str:
    # Repeat until nothing matches, because a replacement can expose a new match ("@@user").
    # This ends: each round that changes the text removes at least one "@", "." or ":".
    patterns = [
        (pattern, f" {token} ")
        for pattern, token, enabled in (
            (_EMAIL, _EMAIL_TOKEN, options.replace_emails),
            (_URL, _URL_TOKEN, options.replace_urls),
            (_MENTION, _MENTION_TOKEN, options.replace_mentions),
        )
        if enabled
    ]
    while True:
        replaced = text
        for pattern, padded_token in patterns:
            replaced = pattern.sub(padded_token, replaced)
        if replaced == text:
            return text
        text = replaced


def _squeeze(text: str, max_repeats: int) -> str:
    return _REPEAT.sub(lambda run: run.group(1) * min(len(run.group()), max_repeats), text)


def _space_unit(match: re.Match[str]) -> str:
    unit = match.group()
    if len(unit) == 1 and unicodedata.category(unit)[0] not in ("P", "S"):
        return unit
    return f" {unit} "
