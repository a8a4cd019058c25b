"""LiteLLM: a callback that meters every ``litellm.completion`` / ``acompletion`` call.

```python
litellm.callbacks = [meter.litellm_callback(feature="chat")]
litellm.completion(model="openai/gpt-4o-mini", messages=[...],
                   metadata={"jevons_customer": "acme"})      # per-call attribution
```

LiteLLM passes unknown keyword arguments on to the provider, so per-call attribution goes in
LiteLLM's own ``metadata`` dict: ``metadata={"jevons_customer": ..., "jevons_feature": ...,
"jevons_tags": {...}}`` or ``metadata={"jevons": {"customer": ..., ...}}``. The context
(``meter.context`` / ``meter.run``) is read in ``log_pre_api_call``, which LiteLLM calls in the
caller's thread or task before each pass of the provider request; the success/failure
callbacks (which LiteLLM runs in a worker thread for sync calls) find it again by
``litellm_call_id``.

Attempts: an event is one LiteLLM *pass*, not one HTTP request. Each failure callback is an
``error`` attempt and the success the last one. A pass LiteLLM retries without reporting its
failure (sync ``num_retries``: the wrapper goes straight to ``completion_with_retries``) is seen
as a second ``log_pre_api_call`` of the same ``litellm_call_id``, and recorded then as an
``error`` attempt of unknown usage (``unpriced``: it may have been a timeout). Retries *inside*
the provider SDK (its ``max_retries``, which LiteLLM also sets from ``num_retries``; 2 by
default for OpenAI) are reported to no callback, so they cannot be recorded here: pass
``max_retries=0`` and let ``num_retries`` retry to have every request recorded.

Usage semantics (LiteLLM's OpenAI-shaped ``Usage``): ``prompt_tokens`` includes cache *reads*
(``prompt_tokens_details.cached_tokens``) but not Anthropic-style cache *writes*
(``cache_creation_input_tokens``), which are added to the canonical input here. On a stream
whose provider reported no usage (an OpenAI-compatible one not asked for it with
``stream_options={"include_usage": True}``), LiteLLM fills the reassembled response with its own
token *estimate*: such usage is recorded as not complete (cost ``estimated``), never as exact.
jevons does not ask for the usage itself (LiteLLM would pass the usage chunk on to the caller's
stream). Whether the provider reported it is read from the raw chunks LiteLLM keeps on a sync
stream; on an async stream (whose chunks the callback cannot see) the usage counts as reported
when the caller asked for it or the provider always streams it (Anthropic, Bedrock, Gemini /
Vertex AI, Mistral), else as estimated.

Guards and run budgets are not enforced: LiteLLM swallows any exception a callback raises, so
they cannot stop the call. A call that goes through costs money: it is recorded in its run (its
step taken without the budget check) and not counted as ``blocked``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from jevons.capture.attribution import Attribution, pop_call_attribution
from jevons.capture.build import NO_USAGE, extract_or_review
from jevons.capture.extract import Extracted, UnknownShape, field, register_extractor, to_int
from jevons.capture.meter import Call
from jevons.usage import Usage

if TYPE_CHECKING:
    from jevons.capture.meter import Meter

from litellm.integrations.custom_logger import CustomLogger

__all__ = ["JevonsLiteLLMCallback", "extract_litellm"]

_MAX_PENDING = 10_000


def litellm_usage(block: Any) -> Usage:
    if block is None:
        raise UnknownShape("LiteLLM response has no usage")
    if field(block, "prompt_tokens") is None and field(block, "completion_tokens") is None:
        raise UnknownShape("LiteLLM usage without prompt_tokens/completion_tokens")
    prompt = field(block, "prompt_tokens_details")
    completion = field(block, "completion_tokens_details")
    cache_write = to_int(field(block, "cache_creation_input_tokens")
                         or field(block, "_cache_creation_input_tokens"))
    cache_read = to_int(field(prompt, "cached_tokens") or field(block, "cache_read_input_tokens")
                        or field(block, "_cache_read_input_tokens"))
    server_tools = field(block, "server_tool_use")
    return Usage(
        input_tokens=to_int(field(block, "prompt_tokens")) + cache_write,
        output_tokens=to_int(field(block, "completion_tokens")),
        cache_read_tokens=cache_read,
        cache_write_5m_tokens=cache_write,
        audio_input_tokens=to_int(field(prompt, "audio_tokens")),
        image_input_tokens=to_int(field(prompt, "image_tokens")),
        reasoning_tokens=to_int(field(completion, "reasoning_tokens")),
        audio_output_tokens=to_int(field(completion, "audio_tokens")),
        image_output_tokens=to_int(field(completion, "image_tokens")),
        web_search_requests=to_int(field(server_tools, "web_search_requests")),
    )


def extract_litellm(response: Any, model: str | None = None) -> Extracted:
    tools = 0
    for choice in field(response, "choices", ()) or ():
        tools += len(field(field(choice, "message"), "tool_calls", ()) or ())
    usage = litellm_usage(field(response, "usage"))
    if tools:
        usage = replace(usage, tool_calls=tools)
    return Extracted(usage, model=field(response, "model") or model)


register_extractor("litellm", "chat", extract_litellm, default=True)


# LiteLLM provider names whose streams always carry the provider's usage (Anthropic's
# ``message_delta``, Gemini's ``usageMetadata``, Bedrock's ``metadata`` event, Mistral's last chunk)
_STREAMS_REPORT_USAGE = frozenset({"anthropic", "bedrock", "bedrock_converse", "gemini", "vertex_ai",
                                   "vertex_ai_beta", "mistral"})


def _provider_reported_stream_usage(kwargs: Mapping[str, Any]) -> bool:
    """Whether the provider itself reported both token counts of a streamed call. LiteLLM's
    reassembled response takes each count from the chunks' usage when it is there (> 0) and
    otherwise puts its own ``token_counter`` estimate in, with nothing telling the two apart.
    The raw chunks it kept tell: ``original_response`` is its stream wrapper (``.chunks``) on a
    sync stream. On an async one it is not: then the usage counts as reported only when the
    caller asked for it (``stream_options={"include_usage": True}``) or the provider always
    streams it. Anything else is an estimate, never recorded as exact."""
    chunks = getattr(kwargs.get("original_response"), "chunks", None)
    if not isinstance(chunks, list):
        options = kwargs.get("stream_options")
        asked = isinstance(options, Mapping) and options.get("include_usage") is True
        return asked or kwargs.get("custom_llm_provider") in _STREAMS_REPORT_USAGE
    prompt = completion = False
    for chunk in chunks:
        usage = field(chunk, "usage")
        if usage is None:
            hidden = getattr(chunk, "_hidden_params", None)
            usage = hidden.get("usage") if isinstance(hidden, Mapping) else None
        if usage is not None:
            prompt = prompt or to_int(field(usage, "prompt_tokens")) > 0
            completion = completion or to_int(field(usage, "completion_tokens")) > 0
    return prompt and completion


def _metadata(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    params = kwargs.get("litellm_params")
    meta = params.get("metadata") if isinstance(params, Mapping) else None
    if not isinstance(meta, Mapping):
        meta = kwargs.get("metadata")
    return dict(meta) if isinstance(meta, Mapping) else {}


@dataclass(slots=True)
class _Pending:
    """A LiteLLM call between its first ``log_pre_api_call`` and its success."""

    call: Call
    passes: int = 0  # ``log_pre_api_call``s seen: passes of the request LiteLLM started
    recorded: int = 0  # failed passes recorded


class JevonsLiteLLMCallback(CustomLogger):
    """Register with ``litellm.callbacks = [meter.litellm_callback()]``."""

    def __init__(self, meter: Meter, attribution: Attribution) -> None:
        super().__init__()
        self.meter = meter
        self.attribution = attribution
        # LiteLLM deduplicates custom loggers by class name and public str/int attributes:
        # a unique value keeps two meters' callbacks (or two attributions) from merging
        self.jevons_callback_id = f"{id(meter):x}-{id(self):x}"
        # re-entrant: a call is started under it (``_entry``), and an ``on_error`` hook that
        # makes a LiteLLM call of its own on this thread comes back here
        self._lock = threading.RLock()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    # ------------------------------------------------------------------ call tracking
    def _start(self, kwargs: Mapping[str, Any]) -> Call:
        """The call as ``Meter.begin`` starts one, without its enforcement (see the module
        docstring: LiteLLM would swallow a ``BudgetExceeded`` or ``CapReached`` and send the
        request anyway)."""
        per_call = pop_call_attribution(_metadata(kwargs), self.meter._error)
        call = self.meter.begin(str(kwargs.get("custom_llm_provider") or "litellm"), "chat",
                                kwargs.get("model"), self.attribution, None, extractor="litellm",
                                enforce=False)
        if call is None:
            raise RuntimeError("jevons could not start metering this LiteLLM call")
        if per_call is not None:
            call.attribution = per_call.over(call.attribution)
        return call

    def _entry(self, kwargs: Mapping[str, Any]) -> tuple[str, _Pending]:
        """The pending call of ``kwargs``' ``litellm_call_id``, started on first sight. It is
        started under the lock: two hooks of one call on two threads (the caller's and
        LiteLLM's logging worker) must not both start it, which took two run steps."""
        call_id = str(kwargs.get("litellm_call_id") or "")
        if not call_id:
            return call_id, _Pending(self._start(kwargs))
        with self._lock:
            entry = self._pending.get(call_id)
            if entry is None:
                entry = self._pending[call_id] = _Pending(self._start(kwargs))
                while len(self._pending) > _MAX_PENDING:
                    self._pending.popitem(last=False)
        return call_id, entry

    def _attempt_call(self, call: Call, attempt_no: int) -> Call:
        attempt = Call(self.meter, call.provider, call.api, call.model, call.attribution, call.run,
                       call.step, call.extractor)
        attempt.attempt_no = attempt_no
        return attempt

    def _pass_started(self, kwargs: Mapping[str, Any]) -> None:
        """A pass of the request is about to be sent. One more than the passes that ended
        (failures recorded) means LiteLLM retried a pass whose failure it did not report."""
        _, entry = self._entry(kwargs)
        with self._lock:
            entry.passes += 1
            unreported = list(range(entry.recorded + 1, entry.passes))
            entry.recorded = max(entry.recorded, entry.passes - 1)
        for attempt_no in unreported:
            self._attempt_call(entry.call, attempt_no).finish_extracted(
                Extracted(NO_USAGE, complete=False), "error",
                "failed; LiteLLM retried without reporting the failure (usage unknown)")

    def _attempt(self, kwargs: Mapping[str, Any], final: bool) -> Call:
        call_id, entry = self._entry(kwargs)
        with self._lock:
            attempt_no = entry.recorded + 1
            if final:
                if call_id:
                    self._pending.pop(call_id, None)
            else:
                entry.recorded = attempt_no
                entry.passes = max(entry.passes, attempt_no)
        return self._attempt_call(entry.call, attempt_no)

    # ------------------------------------------------------------------ LiteLLM hooks
    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        try:
            if isinstance(kwargs, Mapping):
                self._pass_started(kwargs)
        except Exception as exc:
            self.meter._error(exc, "adapter")

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            call = self._attempt(kwargs, final=True)
            if not (isinstance(kwargs, Mapping) and kwargs.get("stream") is True):
                call.finish(response_obj)  # the "litellm" extractor; an unknown shape is kept for review
                return
            x = extract_or_review(call.extractor, call.api, response_obj, call.model, self.meter._error)
            if x.complete and not _provider_reported_stream_usage(kwargs):
                x.complete = False
                x.note = "streamed usage estimated by LiteLLM (the provider reported none)"
            call.finish_extracted(x)
        except Exception as exc:
            self.meter._error(exc, "adapter")

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            call = self._attempt(kwargs, final=False)
            exc = kwargs.get("exception") if isinstance(kwargs, Mapping) else None
            if isinstance(exc, BaseException):
                call.fail(exc)
            else:
                call.finish_extracted(Extracted(Usage(requests=0), complete=False), "error",
                                      "LiteLLM reported a failure")
        except Exception as exc:
            self.meter._error(exc, "adapter")

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self.log_success_event(kwargs, response_obj, start_time, end_time)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self.log_failure_event(kwargs, response_obj, start_time, end_time)
