"""The typed clients against this repo's real Spaces, started once for the module on their demo
models (the launcher ``make demo`` uses), sync and async; the fault proxy in front of the real
toxic-classifier (random faults, and a sleeping Space woken through the Hub stand-in); and
``spaces-client check`` on all of them."""

from __future__ import annotations

import asyncio
import time

import pytest
from fakes.fault_proxy import FaultProxy, sleeping_space
from fakes.random_faults import run_random_faults
from fakes.servers import serve
from pydantic import BaseModel
from spaces_client import (
    Generation,
    ScamReply,
    SpaceInputError,
    SpacesClient,
    SpamClassification,
    SpamClient,
    TiersClient,
    Toxicity,
    ToxicityClient,
)
from spaces_client.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spaces(launch_space):
    return {name: launch_space(name) for name in ("toxic-classifier", "llm-tiers", "spam-mistral")}


@pytest.fixture(scope="module")
def client():
    with SpacesClient() as client:
        yield client


# ---- toxic-classifier ---------------------------------------------------------------------------


def test_toxicity_sync_async_and_batch(spaces, client):
    tox = ToxicityClient(spaces["toxic-classifier"].url, client=client)
    verdict = tox.classify("أكره هذا الشخص وأتمنى أن يختفي")
    assert isinstance(verdict, Toxicity) and verdict.label in ("harmful", "safe")
    assert verdict.raw and verdict.model and "arabert-tiny" in verdict.model
    texts = ["نص أول", "نص ثان", "مرحبا"]

    async def both():
        return await asyncio.gather(*(tox.aclassify(t) for t in texts))

    one_by_one = asyncio.run(both())
    batch = tox.classify_many(texts)
    assert [v.label for v in batch] == [v.label for v in one_by_one]
    # int8 scores move slightly with the batch a text lands in
    assert [v.score for v in batch] == pytest.approx([v.score for v in one_by_one], abs=0.01)
    tox.state.preferred = "rest"
    assert tox.classify("مرحبا").score == pytest.approx(batch[2].score, abs=0.01)
    with pytest.raises(SpaceInputError, match="empty"):
        tox.classify("   ")


def test_120_calls_to_the_real_space_with_random_faults_lose_none(spaces, figure):
    url = spaces["toxic-classifier"].url
    with SpacesClient() as direct:
        truth = ToxicityClient(url, client=direct)
        cache: dict[str, Toxicity] = {}

        def verdict_of(text: str) -> Toxicity:
            if text not in cache:
                cache[text] = truth.classify(text)
            return cache[text]

        proxy = FaultProxy(url)
        with serve(proxy) as server:
            out = run_random_faults(
                server.url,
                verdict_of,
                calls=120,
                rate=0.08,
                deadline=8.0,
                proxy=proxy,
                seed=7,
                tolerance=0.01,  # int8 scores move slightly with the batch a text lands in
            )
    figure(
        f"120 calls, real toxic-classifier behind the fault proxy ({out['faults']} faults): "
        f"{out['right']} right, {out['typed_error']} typed errors, {out['lost']} lost; slowest "
        f"{out['slowest_s']} s (deadline 8 s); {out['seconds']} s"
    )
    assert out["lost"] == 0, out["lost_examples"]


def test_the_real_space_asleep_on_the_hub_is_woken_and_answers(spaces, fake_hub, figure):
    hub, hub_server = fake_hub
    hub.set("org/toxic-classifier", "SLEEPING")
    hub.restart_starting_s = 2.0
    proxy = FaultProxy(spaces["toxic-classifier"].url)
    sleeping_space(proxy, hub, "org/toxic-classifier", starting_s=2.0, wake_on_visit=False)
    with (
        serve(proxy) as server,
        SpacesClient({"hub_endpoint": hub_server.url}, environ={"HF_WRITE": "hf_w"}) as client,
    ):
        tox = ToxicityClient(
            server.url,
            client=client,
            repo_id="org/toxic-classifier",
            write_token_env="HF_WRITE",
            deadline_s=30,
        )
        start = time.monotonic()
        verdict = tox.classify("مرحبا")
        took = time.monotonic() - start
    assert verdict.label in ("harmful", "safe")
    assert hub.restarts["org/toxic-classifier"] == 1
    figure(
        f"real toxic-classifier asleep on the Hub stand-in (restart, 2 s APP_STARTING): "
        f"answered after {took:.2f} s"
    )


# ---- llm-tiers ----------------------------------------------------------------------------------


class Person(BaseModel):
    name: str
    age: int


def test_tiers_generate_structure_variations_and_stream(spaces, client):
    tiers = TiersClient(spaces["llm-tiers"].url, client=client)
    out = tiers.generate("Hello", max_new_tokens=5, seed=1)
    assert isinstance(out, Generation) and out.tier == "base" and out.finish_reason
    assert asyncio.run(tiers.agenerate("Hi", "company", max_new_tokens=3)).tier == "company"
    user = tiers.generate("Hi", "user", {"name": "Ada"}, max_new_tokens=3)
    assert user.tier == "user"
    person = tiers.generate_structure("A person:", Person, max_new_tokens=40)
    assert isinstance(person, Person)
    variations = tiers.generate_variations("Name a product", 3, "company", max_new_tokens=5)
    assert len(variations) == 3
    chunks = list(tiers.stream("Hello", max_new_tokens=6, seed=3))
    whole = tiers.generate("Hello", max_new_tokens=6, seed=3, temperature=0.7)
    assert chunks and isinstance("".join(chunks), str) and whole.text

    async def astream():
        return [c async for c in tiers.astream("Hello", max_new_tokens=4)]

    assert asyncio.run(astream())
    with pytest.raises(SpaceInputError, match="tier"):
        tiers.generate("Hello", "premium")
    tiers.state.preferred = "gradio"  # the Gradio path parses into the same model
    assert tiers.generate("Hello", max_new_tokens=3).tier == "base"


# ---- spam-mistral -------------------------------------------------------------------------------


def test_spam_classify_and_reply(spaces, client):
    spam = SpamClient(spaces["spam-mistral"].url, client=client)
    verdict = spam.classify("You won a prize! Claim it at bit.ly/3xYz9")
    assert isinstance(verdict, SpamClassification)
    assert len(spam.classify_many(["See you at 7?", "مبروك! ربحت جائزة"])) == 2
    reply = spam.generate_reply(
        [{"role": "scammer", "text": "Your parcel is held."}],
        "victim",
        "friendly",
        max_new_tokens=10,
        seed=1,
    )
    assert isinstance(reply, ScamReply) and reply.simulated and reply.persona == "victim"
    spam.state.preferred = "rest"
    again = asyncio.run(
        spam.agenerate_reply("Hello, who is this?", "scammer", "urgent", max_new_tokens=10, seed=1)
    )
    assert again.persona == "scammer"
    with pytest.raises(SpaceInputError, match="persona"):
        spam.generate_reply("Hi", "alien")


# ---- spaces-client check ------------------------------------------------------------------------


def test_check_against_every_running_space(spaces, capsys):
    code = main(
        [
            "check",
            "--space",
            f"toxicity={spaces['toxic-classifier'].url}",
            "--space",
            f"tiers={spaces['llm-tiers'].url}",
            "--space",
            f"spam={spaces['spam-mistral'].url}",
        ]
    )
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    assert out.count(" ok") >= 3 and "arabert-tiny" in out and "mistral-tiny" in out
