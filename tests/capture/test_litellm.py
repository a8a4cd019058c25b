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
from replay import ReplayServer, Reply

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


def test_a_pass_litellm_retries_without_reporting_it_is_a_failed_attempt(
    replay: ReplayServer, meter: Meter, callback: Any
) -> None:
    # num_retries=1: the OpenAI SDK inside LiteLLM tries twice (500, 500) unseen by any callback,
    # then LiteLLM's wrapper retries the pass without reporting its failure: only the second
    # log_pre_api_call of the same litellm_call_id tells it
    replay.on(CHAT, [Reply.error(500, retry_after=0), Reply.error(500, retry_after=0), "openai/chat_basic"])
    complete(replay, num_retries=1)
    assert replay.count(CHAT) == 3
    first, second = sorted(wait_for(meter, 2), key=lambda e: e.attempt)
    assert (first.attempt, first.status, first.usage_complete) == (1, "error", False)
    assert first.cost.status == "unpriced"  # a failure of unknown kind: never a silent $0
    assert (second.attempt, second.status, second.usage.input_tokens) == (2, "ok", 19)
    assert first.step == second.step and first.customer == second.customer


def test_streamed_usage_litellm_estimated_is_never_exact(
    replay: ReplayServer, meter: Meter, callback: Any
) -> None:
    replay.on(CHAT, "openai/chat_stream")
    list(complete(replay, stream=True))  # the provider was not asked for usage: LiteLLM counts tokens
    [estimated] = wait_for(meter, 1)
    assert "stream_options" not in replay.last(CHAT).json  # the caller's stream is left as asked
    assert not estimated.usage_complete and estimated.cost.status == "estimated"
    list(complete(replay, stream=True, stream_options={"include_usage": True}))
    reported = wait_for(meter, 2)[1]
    assert reported.usage_complete and reported.cost.status == "priced"
    assert (reported.usage.input_tokens, reported.usage.output_tokens) == (19, 10)


async def test_async_streamed_usage_litellm_estimated_is_never_exact(
    replay: ReplayServer, meter: Meter, callback: Any
) -> None:
    replay.on(CHAT, "openai/chat_stream")
    for options in (None, {"include_usage": True}):
        stream = await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True,
                                           stream_options=options, api_base=replay.url + "/v1",
                                           api_key="sk-test")
        async for _ in stream:
            pass
    for _ in range(500):
        if len(meter.events()) == 2:
            break
        await asyncio.sleep(0.01)
    estimated, reported = sorted(meter.events(), key=lambda e: e.usage.input_tokens)
    assert (estimated.usage_complete, estimated.cost.status) == (False, "estimated")
    assert (reported.usage_complete, reported.usage.input_tokens) == (True, 19)


def test_calls_over_the_run_budget_are_recorded_in_the_run_not_blocked(
    replay: ReplayServer, meter: Meter, callback: Any
) -> None:
    # LiteLLM swallows a callback's BudgetExceeded and sends the request anyway: it costs money
    replay.on(CHAT, "openai/chat_basic")
    with meter.run("lite-budget", budget_usd="0.000001") as run:
        for _ in range(3):
            complete(replay)
            wait_for(meter, run.steps)  # the previous call's cost is in the run before the next
    events = wait_for(meter, 3)
    assert replay.count(CHAT) == 3
    assert sorted((e.run_id, e.step) for e in events) == [("lite-budget", i) for i in (1, 2, 3)]
    assert run.steps == 3 and run.cost_usd == 3 * events[0].cost.total_usd  # type: ignore[operator]
    assert meter.stats()["blocked"] == 0


def test_one_call_seen_by_two_threads_at_once_takes_one_run_step(meter: Meter, callback: Any) -> None:
    """LiteLLM's hooks for one call can run on the caller's thread and on its logging worker:
    the first sight of a call id starts it once, however the two threads interleave."""
    import contextvars
    import threading

    started: list[int] = []
    original = callback._start
    both_in = threading.Barrier(2, timeout=5)

    def slow_start(kwargs: Any) -> Any:
        started.append(1)
        time.sleep(0.05)  # the other thread arrives meanwhile
        return original(kwargs)

    callback._start = slow_start
    kwargs = {"litellm_call_id": "same-call", "model": "gpt-4o-mini", "custom_llm_provider": "openai"}
    entries: list[Any] = []

    def see() -> None:
        both_in.wait()
        entries.append(callback._entry(kwargs)[1])

    with meter.run("lite-race") as run:
        # each thread inside the run, as LiteLLM's worker is (it copies the caller's context)
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(see,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(started) == 1 and entries[0] is entries[1]
        assert run.steps == 1 and entries[0].call.step == 1


def test_an_on_error_hook_that_calls_litellm_again_does_not_hang(meter: Meter, callback: Any) -> None:
    """A call is started under the callback's lock; something reported while starting it (the
    ``on_error`` hook, a log handler) may make a LiteLLM call of its own on the same thread."""
    import threading

    original = callback._start

    def start_reentering(kwargs: Any) -> Any:
        if kwargs["litellm_call_id"] == "outer":
            callback._entry({"litellm_call_id": "inner", "model": "gpt-4o-mini"})
        return original(kwargs)

    callback._start = start_reentering
    outer = {"litellm_call_id": "outer", "model": "gpt-4o-mini"}
    worker = threading.Thread(target=callback._entry, args=(outer,), daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert set(callback._pending) == {"outer", "inner"}
