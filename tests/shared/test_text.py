"""Tests for shared.text: clean_text, check_text and AraBERT-style normalize_arabic."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import InputError
from shared.text import (
    ARABIC_PLACEHOLDERS,
    ArabicNormalization,
    TextInputError,
    TextLimits,
    check_text,
    clean_text,
    normalize_arabic,
)

ZWNJ, ZWJ = "\u200c", "\u200d"
TATWEEL = "\u0640"
# Harakat, shadda, sukun, tanween, superscript alef and a few Quranic marks.
TASHKEEL = [chr(c) for c in range(0x064B, 0x0653)] + ["\u0670", "\u0610", "\u06d6", "\u06ed"]
ARABIC_LETTERS = [chr(c) for c in range(0x0621, 0x063B)] + [chr(c) for c in range(0x0641, 0x064B)]
INVISIBLES = "\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff\u061c"

# Fragments that exercise the tricky paths: URLs, e-mails, mentions, placeholders, punctuation,
# joiners, emoji parts, presentation forms, lone surrogates, control and bidi characters.
FRAGMENTS = [
    *ARABIC_PLACEHOLDERS,
    *"[]@.:/#*_-!?؟،؛()\"' \n\t\x00\x1c\x85\u2028\u00a0",
    "http://",
    "https://",
    "ftp://",
    "www.",
    "htttps://",
    ".com",
    ".sa",
    "x.com/a",
    "user@mail.com",
    "a@b",
    "@user",
    "@@",
    ZWNJ,
    ZWJ,
    TATWEEL,
    "\ufe0f",
    "\u20e3",
    "\U0001f3f4",
    "\U000e0067",
    "\U000e007f",
    "\U0001f1f8",
    "\U0001f1e6",
    "\U0001f3fd",
    "\U0001f468",
    "\U0001f602",
    "\u0653",
    "\u0654",
    "\u0655",
    "\ufe70",
    "\ufdfa",
    "\ufefb",
    "\ud800",
    "\udfff",
    "١",
    "۴",
    "1",
    *INVISIBLES,
    *TASHKEEL,
]
CHARACTERS = st.one_of(
    st.characters(),
    st.characters(min_codepoint=0x0600, max_codepoint=0x08FF),  # Arabic and its supplements
    st.characters(min_codepoint=0xFB50, max_codepoint=0xFEFF),  # Arabic presentation forms
    st.characters(min_codepoint=0x1F1E6, max_codepoint=0x1FAFF),  # flags and emoji
    st.characters(categories=["Mn", "Me", "Mc", "Cc", "Cf", "Zs", "Sk"]),
    st.sampled_from(FRAGMENTS),
)
TEXTS = st.lists(CHARACTERS, max_size=40).map("".join)
OPTIONS = st.builds(
    ArabicNormalization,
    strip_tashkeel=st.booleans(),
    strip_tatweel=st.booleans(),
    replace_urls=st.booleans(),
    replace_emails=st.booleans(),
    replace_mentions=st.booleans(),
    max_repeats=st.integers(min_value=0, max_value=4),
    space_punctuation=st.booleans(),
    eastern_digits=st.booleans(),
)


# --- clean_text ---------------------------------------------------------------------------------


@settings(max_examples=400)
@given(TEXTS)
def test_clean_text_is_idempotent_and_leaves_only_visible_utf8(text):
    cleaned = clean_text(text)

    assert clean_text(cleaned) == cleaned
    assert cleaned == cleaned.strip()
    assert "  " not in cleaned
    assert not any(c in cleaned for c in INVISIBLES)
    assert not any(c in cleaned for c in "\t\n\x00\x85\u2028")
    cleaned.encode("utf-8")  # no lone surrogates: tokenizers and JSON can take it


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ﻣﺮﺣﺒﺎ ﺑﻜﻢ", "مرحبا بكم"),  # presentation forms fold to base letters
        ("ﻻ", "لا"),  # lam-alef ligature
        ("Ｈｅｌｌｏ", "Hello"),  # full-width Latin
        ("\ufeffhello\u200b world\u202e!", "hello world!"),  # BOM, zero-width space, bidi
        ("  a \t\n b\u00a0\u2003c \r\n", "a b c"),  # every whitespace run becomes one space
        ("a\x00b\x07c", "abc"),
        ("می\u200cخواهم", "می\u200cخواهم"),  # ZWNJ inside a Persian word stays
        ("\u200cمی \u200c", "می"),  # ZWNJ outside a word goes
        ("می\u200c خواهم", "می خواهم"),
        ("می\u200c.", "می."),
        ("👨\u200d👩\u200d👧", "👨\u200d👩\u200d👧"),  # ZWJ inside an emoji sequence stays
        ("a\u200db", "ab"),  # ZWJ between letters goes
        ("🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f", None),  # tag flag
        ("x\U000e0067y", "xy"),  # tag characters outside a flag go
        ("\ud800ok\udfff", "ok"),  # lone surrogates
        ("\u200b \u200e\t", ""),
    ],
)
def test_clean_text_examples(text, expected):
    assert clean_text(text) == (text if expected is None else expected)


def test_clean_text_drops_every_control_and_format_character_it_does_not_keep_on_purpose():
    kept_on_purpose = {ZWNJ}  # ZWJ and tags survive only inside emoji, tested above
    for code_point in range(sys.maxunicode + 1):
        char = chr(code_point)
        if unicodedata.category(char) not in ("Cc", "Cf", "Cs") or char in kept_on_purpose:
            continue
        assert clean_text(f"a{char}b") in ("ab", "a b"), f"U+{code_point:04X} survives"


# --- check_text ---------------------------------------------------------------------------------

LIMITS = TextLimits(max_chars=20_000)


def test_check_text_returns_the_cleaned_text():
    assert check_text("  \ufeffمرحبا\u200b   بكم\n", LIMITS) == "مرحبا بكم"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (["a"], "text must be a string, got list"),
        (None, "text must be a string, got NoneType"),
        (b"hi", "text must be a string, got bytes"),
        (42, "text must be a string, got int"),
        ("", "text is empty"),
        (" \n\t\u200b\ufeff ", "text is empty"),
        ("a" * 25_000, "text is 25,000 characters; the limit is 20,000"),
        ("a" * 20_000 + " " * 30_000, None),  # whitespace collapses: accepted
        ("a" * 1_000_000, "text is 1,000,000 characters; the limit is 20,000"),
    ],
)
def test_check_text_errors_name_the_problem(payload, message):
    if message is None:
        assert len(check_text(payload, LIMITS)) == 20_000
        return
    with pytest.raises(TextInputError) as caught:
        check_text(payload, LIMITS)
    assert str(caught.value) == message
    assert isinstance(caught.value, InputError)
    assert isinstance(caught.value, ValueError)


def test_check_text_uses_the_field_name_and_minimum():
    limits = TextLimits(max_chars=10, min_chars=3)
    with pytest.raises(TextInputError, match=r"^comment is 2 characters; the minimum is 3$"):
        check_text("ab", limits, field="comment")
    with pytest.raises(TextInputError, match=r"^comment must be a string, got dict$"):
        check_text({}, limits, field="comment")
    assert check_text("abc", limits, field="comment") == "abc"


@pytest.mark.parametrize(("max_chars", "min_chars"), [(0, 1), (10, 0), (5, 6)])
def test_text_limits_reject_impossible_bounds(max_chars, min_chars):
    with pytest.raises(ValueError, match="min_chars"):
        TextLimits(max_chars=max_chars, min_chars=min_chars)


@given(TEXTS, st.integers(min_value=1, max_value=30))
def test_check_text_accepts_exactly_what_fits(text, max_chars):
    limits = TextLimits(max_chars=max_chars)
    cleaned = clean_text(text)
    if 1 <= len(cleaned) <= max_chars:
        assert check_text(text, limits) == cleaned
    else:
        with pytest.raises(TextInputError):
            check_text(text, limits)


# --- normalize_arabic ---------------------------------------------------------------------------


@settings(max_examples=500)
@given(TEXTS)
def test_normalize_arabic_is_idempotent(text):
    normalized = normalize_arabic(text)

    assert normalize_arabic(normalized) == normalized
    assert clean_text(normalized) == normalized
    assert not any(c in normalized for c in [*TASHKEEL, TATWEEL, "١", "۴"])


@settings(max_examples=500)
@given(TEXTS, OPTIONS)
def test_normalize_arabic_is_idempotent_for_every_option_set(text, options):
    normalized = normalize_arabic(text, options)

    assert normalize_arabic(normalized, options) == normalized


@pytest.mark.parametrize(
    ("text", "options"),
    [
        # Stripping U+0610 unblocks alef + hamza above, which composes into a third أ.
        ("أأا\u0610\u0654", ArabicNormalization()),
        # Replacing the mention exposes "-foo.com" to the URL pattern.
        ("@user-foo.com", ArabicNormalization(space_punctuation=False)),
        # The mention's placeholder strands the ZWNJ that was inside "@user\u200cب".
        ("@user\u200cب", ArabicNormalization()),
        # Squeezing completes the URL scheme.
        ("htttps://x", ArabicNormalization(space_punctuation=False)),
    ],
)
def test_normalize_arabic_is_idempotent_on_hard_cases(text, options):
    normalized = normalize_arabic(text, options)
    assert normalize_arabic(normalized, options) == normalized


@given(TEXTS)
def test_normalize_arabic_with_no_steps_is_clean_text(text):
    assert normalize_arabic(text, ArabicNormalization.none()) == clean_text(text)


# An Arabic sentence as (character, tashkeel and tatweel to insert after it) pairs.
DECORATED_SENTENCES = st.lists(
    st.tuples(
        st.sampled_from([*ARABIC_LETTERS, " "]),
        st.lists(st.sampled_from([*TASHKEEL, TATWEEL]), max_size=3).map("".join),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300)
@given(DECORATED_SENTENCES)
def test_tashkeel_and_tatweel_do_not_change_the_result(sentence):
    plain = "".join(char for char, _ in sentence)
    decorated = "".join(char + marks for char, marks in sentence)
    assert normalize_arabic(decorated) == normalize_arabic(plain)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("أكرهـــــه", "أكرهه"),  # tatweel goes, then the doubled ha is within the limit
        ("مَرْحَبًا", "مرحبا"),  # fatha, sukun, fatha, tanween
        ("اللّٰه", "الله"),  # shadda and superscript alef
        ("راااائع", "راائع"),  # runs longer than 2 are squeezed to 2
        ("هههههههه", "هه"),
        ("٣٤٥", "345"),
        ("۱۴۰۲", "1402"),  # Persian digits
        ("1000000 و ٠٠٠٠", "1000000 و 0000"),  # digits are never squeezed
        ("إسلام أمة مستشفى", "إسلام أمة مستشفى"),  # alef, ta marbuta, alef maqsura stay
        ("شوفوا https://t.co/abc123 هههههه", "شوفوا [رابط] هه"),
        ("زوروا www.example.com/ar?x=1.", "زوروا [رابط] ."),  # sentence dot is not the URL's
        ("الموقع example.sa رائع", "الموقع [رابط] رائع"),
        ("مثلا e.g. ok", "مثلا e . g . ok"),  # no known domain: just punctuation
        ("راسلني على ahmed.ali+x@mail.co.uk!", "راسلني على [بريد] !"),
        ("@ahmed_99 كلامك صح", "[مستخدم] كلامك صح"),
        ("شكرا@sara", "شكرا [مستخدم]"),  # mentions glued to a word too
        ("جميل،رائع!؟", "جميل ، رائع ! ؟"),
        ("(نعم)", "( نعم )"),
        ("[رابط] [مستخدم]", "[رابط] [مستخدم]"),  # placeholders are never split
        ("7abibi enta 3ayez eh??? 😂😂😂😂", "7abibi enta 3ayez eh ? ? 😂 😂"),
        ("رائع👍🏽جدا", "رائع 👍🏽 جدا"),  # emoji are tokens, skin tone stays attached
        ("عائلة👨\u200d👩\u200d👧!", "عائلة 👨\u200d👩\u200d👧 !"),
        ("🇸🇦🇪🇬", "🇸🇦 🇪🇬"),  # flags are pairs of regional indicators
        ("htttps://x.y/z", "[رابط]"),  # squeezing completes the scheme
    ],
)
def test_normalize_arabic_examples(text, expected):
    assert normalize_arabic(text) == expected


def test_normalize_arabic_steps_switch_off_one_by_one():
    text = "مَرْحَبًا ـ @user ١٢ راااائع!"
    assert normalize_arabic(text, ArabicNormalization(strip_tashkeel=False)) == (
        "مَرْحَبًا [مستخدم] 12 راائع !"
    )
    assert normalize_arabic(text, ArabicNormalization(strip_tatweel=False)) == (
        "مرحبا ـ [مستخدم] 12 راائع !"
    )
    assert normalize_arabic(text, ArabicNormalization(replace_mentions=False)) == (
        "مرحبا @ user 12 راائع !"
    )
    assert normalize_arabic(text, ArabicNormalization(eastern_digits=False)) == (
        "مرحبا [مستخدم] ١٢ راائع !"
    )
    assert normalize_arabic(text, ArabicNormalization(max_repeats=0)) == (
        "مرحبا [مستخدم] 12 راااائع !"
    )
    assert normalize_arabic(text, ArabicNormalization(max_repeats=1)) == (
        "مرحبا [مستخدم] 12 رائع !"
    )
    assert normalize_arabic(text, ArabicNormalization(space_punctuation=False)) == (
        "مرحبا [مستخدم] 12 راائع!"
    )
    urls = "a@b.com https://x.org"
    assert normalize_arabic(urls, ArabicNormalization(replace_urls=False)) == (
        "[بريد] https : / / x . org"
    )
    assert normalize_arabic(urls, ArabicNormalization(replace_emails=False)) == (
        "a [مستخدم] . com [رابط]"
    )


def test_option_presets():
    assert ArabicNormalization.arabert_v02() == ArabicNormalization()
    none = ArabicNormalization.none()
    assert none.max_repeats == 0
    assert not any(
        [
            none.strip_tashkeel,
            none.strip_tatweel,
            none.replace_urls,
            none.replace_emails,
            none.replace_mentions,
            none.space_punctuation,
            none.eastern_digits,
        ]
    )


def test_from_dict_overrides_the_v02_defaults():
    options = ArabicNormalization.from_dict({"strip_tashkeel": False, "max_repeats": 3})
    assert options == ArabicNormalization(strip_tashkeel=False, max_repeats=3)
    assert ArabicNormalization.from_dict({}) == ArabicNormalization.arabert_v02()


def test_from_dict_rejects_unknown_keys_and_lists_the_valid_ones():
    with pytest.raises(ValueError) as caught:
        ArabicNormalization.from_dict({"strip_diacritics": True, "normalize_alef": True})
    message = str(caught.value)
    assert "['normalize_alef', 'strip_diacritics']" in message
    for name in ("strip_tashkeel", "replace_urls", "max_repeats", "eastern_digits"):
        assert name in message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strip_tashkeel": "yes"}, "strip_tashkeel must be true or false, got 'yes'"),
        ({"max_repeats": -1}, "max_repeats must be a non-negative integer"),
        ({"max_repeats": True}, "max_repeats must be a non-negative integer"),
        ({"max_repeats": "2"}, "max_repeats must be a non-negative integer"),
    ],
)
def test_from_dict_rejects_wrong_types(options, message):
    with pytest.raises(ValueError, match=message):
        ArabicNormalization.from_dict(options)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("word", ["a" * 20_000, "a." * 10_000, "1a" * 10_000, "a-." * 7_000])
def test_normalize_arabic_is_linear_on_long_words(word):
    # Each took 0.8-1.5 s with an unbounded e-mail local part, the GIL held throughout.
    assert "[بريد]" not in normalize_arabic(word)
    assert normalize_arabic(f"راسلني {'x' * 80}@mail.com") == "راسلني xx [بريد]"
