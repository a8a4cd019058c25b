"""The LiteLLM callback: ``litellm.completion`` / ``acompletion`` against the replay server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import litellm
import pytest

from jevons import usage_from_response
from jevons.capture.meter import Meter
from jevons.events import Event
from replay import ReplayServer

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def callback(meter: Meter) -> Iterator[Any]:
    cb = meter.litellm_callback(feature="assistant")
    names = ("callbacks", "input_callback", "success_callback", "failure_callback",
             "_async_success_callback", "_async_failure_callback")
    saved = {name: list(getattr(litellm, name)) for name in names}
    litellm.callbacks = [cb]
    try:
        yield cb
    finally:
        for name, value in saved.items():
            setattr(litellm, name, value)


def wait_for(meter: Meter, n: int) -> list[Event]:
    """LiteLLM runs sync success callbacks on a worker thread: wait (bounded) for them."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = meter.events()
        if len(events) >= n:
            return events
        time.sleep(0.01)
    return meter.events()


def complete(replay: ReplayServer, **kw: Any) -> Any:
    return litellm.completion(model="openai/gpt-4o-mini", messages=MESSAGES, api_base=replay.url + "/v1",
                              api_key="sk-test", **kw)


def test_completion_is_metered_with_context_and_metadata(
    replay: ReplayServer, meter: Meter, callback: Any
) -> None:
    replay.on(CHAT, "openai/chat_cached")
    with meter.context(customer="acme"):
        response = complete(replay, metadata={"jevons_tags": {"team": "x"}})
    assert response.usage.prompt_tokens == 2048
    [event] = wait_for(meter, 1)
    assert (event.customer, event.feature, event.tags) == ("acme", "assistant", {"team": "x"})
    assert (event.provider, event.model) == ("openai", "gpt-4o")
    assert (event.usage.input_tokens, event.usage.cache_read_tokens) == (2048, 1536)
    assert not any(k.startswith("jevons") or k == "metadata" for k in replay.last(CHAT).json)


def test_per_call_customer_in_metadata(replay: ReplayServer, meter: Meter, callback: Any) -> None:
    replay.on(CHAT, "openai/chat_basic")
    complete(replay, metadata={"jevons": {"customer": "beta", "feature": "f2"}})
    [event] = wait_for(meter, 1)
    assert (event.customer, event.feature) == ("beta", "f2")


def test_run_reaches_the_worker_thread(replay: ReplayServer, meter: Meter, callback: Any) -> None:
    replay.on(CHAT, "openai/chat_basic")
    with meter.run("lite-run", customer="acme") as run:
        complete(replay)
        complete(replay)
    events = wait_for(meter, 2)
    assert sorted((e.run_id, e.step) for e in events) == [("lite-run", 1), ("lite-run", 2)]
    assert run.input_tokens == 38


def test_failure_is_an_error_attempt(replay: ReplayServer, meter: Meter, callback: Any) -> None:
    replay.on(CHAT, "openai/error_500")
    with pytest.raises(litellm.exceptions.InternalServerError):
        complete(replay, max_retries=0, metadata={"jevons_customer": "acme"})
    [event] = wait_for(meter, 1)
    assert event.status == "error" and event.customer == "acme" and event.usage.total_tokens == 0


async def test_acompletion(replay: ReplayServer, meter: Meter, callback: Any) -> None:
    replay.on(CHAT, "openai/chat_reasoning")
    with meter.context(customer="async-co"):
        await litellm.acompletion(model="openai/o4-mini", messages=MESSAGES, api_base=replay.url + "/v1",
                                  api_key="sk-test")
    for _ in range(500):  # the async success callback runs as a task on this loop
        if meter.events():
            break
        await asyncio.sleep(0.01)
    [event] = meter.events()
    assert event.customer == "async-co" and event.usage.reasoning_tokens == 1024


def test_litellm_usage_adds_anthropic_cache_writes() -> None:
    from litellm.types.utils import ModelResponse, Usage

    usage = Usage(prompt_tokens=1300, completion_tokens=50, total_tokens=1350,
                  cache_creation_input_tokens=400, cache_read_input_tokens=1000)
    response = ModelResponse(model="claude-sonnet-4", usage=usage)
    u = usage_from_response("litellm", response)
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_5m_tokens) == (1700, 1000, 400)
