"""Simulated replies carry no working contact point."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redact import PLACEHOLDERS, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Pay at http://secure-verify-acc.info/login now", "Pay at [LINK] now"),
        ("go to www.prize-claim.com?id=7", "go to [LINK]"),
        ("click bit.ly/3xYz9 today", "click [LINK] today"),
        ("visit PAYPAL-SECURE.CO.UK/verify", "visit [LINK]"),
        ("write to claims@winner-desk.org please", "write to [EMAIL] please"),
        ("call +44 7700 900123 now", "call [PHONE] now"),
        ("اتصل على ٠٥٥١٢٣٤٥٦٧ فورا", "اتصل على [PHONE] فورا"),
        ("call (555) 010-4477", "call [PHONE]"),
        ("card 4111 1111 1111 1111 exp 12/29", "card [CARD] exp 12/29"),
        ("IBAN SA03 8000 0000 6080 1016 7519", "IBAN [IBAN]"),
        ("send to 0x52908400098527886E0F7030069857D2E4169EE7", "send to [WALLET]"),
        ("btc 1BoatSLRHtKNngkdXEeobR76b53LETtpyT ok", "btc [WALLET] ok"),
        ("message me on telegram @quick_refund_desk", "message me on telegram [HANDLE]"),
    ],
)
def test_contact_points_become_placeholders(text, expected):
    assert redact(text).text == expected


def test_ordinary_text_is_left_alone():
    text = "Hi Sara, the meeting is at 10:30 on 12/05, room 204. Bring 3 copies, e.g. the draft."
    assert redact(text) == redact(text).__class__(text, {})


def test_counts_say_what_was_replaced():
    result = redact("mail a@b.co or c@d.io, see x.com, call 0551234567")
    assert result.replaced == {"[EMAIL]": 2, "[LINK]": 1, "[PHONE]": 1}


_DIGITS = st.sampled_from("0123456789٠١٢٣٤٥٦٧٨٩")
_SEP = st.sampled_from(["", " ", "-", ".", ""])
_NUMBER = st.lists(st.tuples(_DIGITS, _SEP), min_size=7, max_size=40).map(
    lambda parts: "".join(d + s for d, s in parts).strip(" -.")
)
_WORDS = st.text(alphabet=st.characters(categories=["L", "Zs"]), max_size=30)


@given(_WORDS, _NUMBER, _WORDS, st.sampled_from(["", "+", "00"]))
def test_no_run_of_seven_digits_survives(before, number, after, prefix):
    out = redact(f"{before} {prefix}{number} {after}").text
    digits = re.sub(r"[\s().-]", "", out)
    assert not re.search(r"[0-9\u0660-\u0669]{7,}", digits), out


@given(st.text(max_size=200))
def test_redaction_is_idempotent_and_keeps_placeholders(text):
    once = redact(text).text
    assert redact(once).text == once
    for placeholder in PLACEHOLDERS:
        assert once.count(placeholder) >= text.count(placeholder)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A long dotted run that ends in no top-level domain: quadratic with an unbounded
        # label repeat (1.6 s at 4,000 characters, every streamed token).
        ("a." * 5000 + "x y", "a." * 5000 + "x y"),
        # A host of more labels than the bound: its tail is replaced, nothing working is left.
        ("go to a.b.c.d.e.f.g.h.i.j.k.l.example.com now", "go to a.b.c.[LINK] now"),
        ("x" * 10000, "x" * 10000),
        ("mail " + "x" * 80 + "@mail.com", "mail " + "x" * 16 + "[EMAIL]"),
    ],
)
def test_long_runs_are_redacted_in_linear_time(text, expected):
    assert redact(text).text == expected
