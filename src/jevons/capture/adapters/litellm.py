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
caller's thread or task before the provider request; the success/failure callbacks (which
LiteLLM runs in a worker thread for sync calls) find it again by ``litellm_call_id``. Each
failure callback is recorded as an ``error`` attempt (LiteLLM retries call it once per failed
attempt); the success as the last attempt.

Usage semantics (LiteLLM's OpenAI-shaped ``Usage``): ``prompt_tokens`` includes cache *reads*
(``prompt_tokens_details.cached_tokens``) but not Anthropic-style cache *writes*
(``cache_creation_input_tokens``), which are added to the canonical input here.

Limits: a guard or run budget cannot stop a LiteLLM call (LiteLLM swallows exceptions raised in
callbacks); an enforcement error there is counted in ``meter.stats()["blocked"]`` only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from jevons.capture.attribution import Attribution, pop_call_attribution
from jevons.capture.errors import JevonsEnforcement
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


def _metadata(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    params = kwargs.get("litellm_params")
    meta = params.get("metadata") if isinstance(params, Mapping) else None
    if not isinstance(meta, Mapping):
        meta = kwargs.get("metadata")
    return dict(meta) if isinstance(meta, Mapping) else {}


class JevonsLiteLLMCallback(CustomLogger):
    """Register with ``litellm.callbacks = [meter.litellm_callback()]``."""

    def __init__(self, meter: Meter, attribution: Attribution) -> None:
        super().__init__()
        self.meter = meter
        self.attribution = attribution
        # LiteLLM deduplicates custom loggers by class name and public str/int attributes:
        # a unique value keeps two meters' callbacks (or two attributions) from merging
        self.jevons_callback_id = f"{id(meter):x}-{id(self):x}"
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, tuple[Call, int]] = OrderedDict()

    # ------------------------------------------------------------------ call tracking
    def _begin(self, kwargs: Mapping[str, Any]) -> tuple[Call, int] | None:
        call_id = str(kwargs.get("litellm_call_id") or "")
        with self._lock:
            entry = self._pending.get(call_id) if call_id else None
        if entry is not None:
            return entry
        meta = _metadata(kwargs)
        per_call = pop_call_attribution(meta, self.meter._error)
        provider = str(kwargs.get("custom_llm_provider") or "litellm")
        try:
            call = self.meter.begin(provider, "chat", kwargs.get("model"), self.attribution,
                                    None, extractor="litellm")
        except JevonsEnforcement:
            return None  # counted as blocked; LiteLLM would swallow the exception
        if call is None:
            return None
        if per_call is not None:
            call.attribution = per_call.over(call.attribution)
        entry = (call, 0)
        if call_id:
            with self._lock:
                self._pending[call_id] = entry
                while len(self._pending) > _MAX_PENDING:
                    self._pending.popitem(last=False)
        return entry

    def _attempt(self, kwargs: Mapping[str, Any], final: bool) -> Call | None:
        entry = self._begin(kwargs)
        if entry is None:
            return None
        call, failures = entry
        call_id = str(kwargs.get("litellm_call_id") or "")
        if call_id:
            with self._lock:
                if final:
                    self._pending.pop(call_id, None)
                else:
                    self._pending[call_id] = (call, failures + 1)
        attempt = Call(self.meter, call.provider, call.api, call.model, call.attribution, call.run,
                       call.step, call.extractor)
        attempt.attempt_no = failures + 1
        return attempt

    # ------------------------------------------------------------------ LiteLLM hooks
    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        try:
            if isinstance(kwargs, Mapping):
                self._begin(kwargs)
        except Exception as exc:
            self.meter._error(exc, "adapter")

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            call = self._attempt(kwargs, final=True)
            if call is not None:
                call.finish(response_obj)  # the "litellm" extractor; an unknown shape is kept for review
        except Exception as exc:
            self.meter._error(exc, "adapter")

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            call = self._attempt(kwargs, final=False)
            if call is None:
                return
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
