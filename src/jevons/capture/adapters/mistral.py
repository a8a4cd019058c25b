"""Mistral chat completions (``mistralai``): canonical usage from ``usage``.

Mistral follows the OpenAI convention: ``prompt_tokens`` is the whole prompt and its cached
part is a subset, reported as ``prompt_tokens_details.cached_tokens`` (also seen as
``prompt_token_details.cached_tokens`` and as a top-level ``num_cached_tokens``; the largest
reported value wins). ``completion_tokens`` is the whole completion. Tool calls are the
``tool_calls`` of the choices' messages (or, streamed, the distinct tool-call indices of the
deltas). A stream's usage arrives in its last chunk.

Audio input on Voxtral chat is billed per minute and reported only as
``prompt_audio_seconds``, which canonical token usage cannot express: such a response is
flagged for review (``needs_review``) with its raw usage kept, rather than priced as if the
audio were text. Audio token counts, when reported (``prompt_tokens_details.audio_tokens``),
become the audio subset.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, TypeVar

from jevons.capture.adapters import (
    FoldedUsage,
    MethodSpec,
    install_attempt_hooks,
    instrument,
    patch_method,
    patch_stream,
    register_adapter,
)
from jevons.capture.attribution import Attribution
from jevons.capture.extract import Extracted, UnknownShape, as_dict, register_extractor, to_int
from jevons.capture.extract import field as _get
from jevons.capture.meter import Call
from jevons.usage import Usage

if TYPE_CHECKING:
    from jevons.capture.meter import Meter

T = TypeVar("T")

__all__ = [
    "API",
    "PROVIDER",
    "MistralAdapter",
    "MistralStreamState",
    "extract_response",
    "needs_review",
    "usage_from_response",
    "usage_from_usage_block",
]

PROVIDER = "mistral"
API = "chat"


def _count(obj: Any, key: str) -> int:
    value = _get(obj, key)
    # the SDK leaves optional fields it never received as an ``Unset`` sentinel
    if value is not None and not isinstance(value, int | float | str):
        return 0
    return max(to_int(value), 0)


def _reported(block: Any) -> dict[str, Any] | None:
    """The usage block as the API sent it. The SDK's ``UsageInfo`` defaults absent counts to 0,
    which would turn an unknown shape into a silent zero: only the fields it really received
    (``model_fields_set`` and extras) are kept."""
    plain = as_dict(block)
    received = getattr(block, "model_fields_set", None)
    if plain is None or not isinstance(received, set | frozenset):
        return plain
    extra = getattr(block, "model_extra", None) or {}
    return {k: v for k, v in plain.items() if k in received or k in extra}


def _cached(block: Any) -> int:
    return max(
        _count(_get(block, "prompt_tokens_details"), "cached_tokens"),
        _count(_get(block, "prompt_token_details"), "cached_tokens"),
        _count(block, "num_cached_tokens"),
    )


def usage_from_usage_block(block: Any, *, tool_calls: int = 0) -> Usage:
    """Canonical usage of one Mistral ``usage`` object (JSON dict or SDK ``UsageInfo``)."""
    return _usage_of_reported(_reported(block), tool_calls)


def _usage_of_reported(block: dict[str, Any] | None, tool_calls: int) -> Usage:
    """Canonical usage of a block already reduced to what was received (``_reported``)."""
    if _get(block, "prompt_tokens") is None and _get(block, "completion_tokens") is None:
        raise UnknownShape("Mistral usage has neither prompt_tokens nor completion_tokens")
    prompt = _count(block, "prompt_tokens")
    audio = _count(_get(block, "prompt_tokens_details"), "audio_tokens")
    return Usage(
        input_tokens=prompt,
        output_tokens=_count(block, "completion_tokens"),
        # as reported: a subset larger than its total is refused by ``Usage`` (kept for review)
        cache_read_tokens=_cached(block),
        audio_input_tokens=audio,
        tool_calls=tool_calls,
    )


def needs_review(block: Any) -> str | None:
    """Why a usage block cannot be priced exactly from tokens alone (``None`` when it can)."""
    seconds = _count(block, "prompt_audio_seconds")
    if seconds and not _count(_get(block, "prompt_tokens_details"), "audio_tokens"):
        return f"audio input billed per minute ({seconds} s reported as prompt_audio_seconds)"
    return None


def _choices(response: Any) -> list[Any]:
    choices = _get(response, "choices")
    return list(choices) if isinstance(choices, list | tuple) else []


def _tool_calls(response: Any) -> int:
    total = 0
    for choice in _choices(response):
        calls = _get(_get(choice, "message"), "tool_calls")
        if isinstance(calls, list | tuple):
            total += len(calls)
    return total


def _reported_usage(response: Any) -> dict[str, Any]:
    block = _reported(_get(response, "usage"))
    if block is None:
        raise UnknownShape("Mistral response has no usage block")
    return block


def usage_from_response(response: Any) -> Usage:
    """Canonical usage of a whole ``ChatCompletionResponse`` (JSON dict or SDK object)."""
    return _usage_of_reported(_reported_usage(response), _tool_calls(response))


def _model(response: Any) -> str | None:
    model = _get(response, "model")
    return model if isinstance(model, str) and model else None


def _tier(block: Any) -> str | None:
    tier = _get(block, "service_tier")
    return tier if isinstance(tier, str) and tier else None


def extract_response(response: Any, model: str | None = None) -> Extracted:
    """The extractor registered for ``("mistral", "chat")``: a whole ``ChatCompletionResponse``."""
    block = _reported_usage(response)  # dumped once: ``model_dump`` is the costly step here
    why = needs_review(block)
    return Extracted(
        usage=_usage_of_reported(block, _tool_calls(response)),
        model=_model(response) or model,
        needs_review=why is not None,
        raw_usage=block,
        service_tier=_tier(block),
        note=why,
    )


register_extractor(PROVIDER, API, extract_response, default=True)
register_extractor("mistralai", API, extract_response, default=True)  # the name the price book uses


@dataclass(slots=True)
class MistralStreamState:
    """Folds the chunks of one chat stream (``CompletionChunk`` or its JSON; an SDK
    ``CompletionEvent`` is unwrapped from ``.data``) into the usage they report: ``add`` each
    chunk, ``result()`` at the end (the ``StreamAccumulator`` protocol of
    ``jevons.capture.adapters``)."""

    model: str | None = None
    finished: bool = False
    tool_calls: int = 0
    _call_ids: set[str] = field(default_factory=set)
    _call_slots: set[tuple[Any, int]] = field(default_factory=set)
    reported: FoldedUsage = field(default_factory=FoldedUsage)  # the usage blocks

    def add(self, chunk: Any) -> None:
        data = _get(chunk, "data")
        if data is not None and _get(chunk, "choices") is None:
            chunk = data
        self.model = _model(chunk) or self.model
        for choice in _choices(chunk):
            calls = _get(_get(choice, "delta"), "tool_calls")
            if isinstance(calls, list | tuple):
                for position, call in enumerate(calls):
                    self._note_tool_call(_get(choice, "index"), position, call)
            if isinstance(_get(choice, "finish_reason"), str):
                self.finished = True
        usage = _get(chunk, "usage")
        if usage is not None:
            self.reported.fold(_reported(usage))

    def _note_tool_call(self, choice: Any, position: int, call: Any) -> None:
        """Count a call once: by its id when it has one, else by its (choice, index) slot, so
        that the fragments of one call split over several deltas are not counted again."""
        call_id = _get(call, "id")
        index = _get(call, "index")
        slot = (choice, index if isinstance(index, int) else position)
        if isinstance(call_id, str) and call_id not in ("", "null"):
            if call_id not in self._call_ids:
                self._call_ids.add(call_id)
                self._call_slots.add(slot)
                self.tool_calls += 1
        elif slot not in self._call_slots:
            self._call_slots.add(slot)
            self.tool_calls += 1

    def usage(self) -> Usage:
        if not self.reported.raw:
            raise UnknownShape("the Mistral stream reported no usage")
        return _usage_of_reported(self.reported.raw, self.tool_calls)

    def result(self) -> Extracted:
        """What the stream reported so far; ``complete`` only once a choice finished and the
        usage chunk arrived (Mistral sends usage with the last chunk only). A usage block
        without the counts this adapter knows, or a finished stream without one, is a shape it
        does not know: ``UnknownShape``, and ``review()`` gives its event."""
        raw = self.reported.raw
        if not raw:
            return self.reported.missing("Mistral", self.finished, self.model,
                                         "stream ended before its usage chunk; usage unknown")
        why = needs_review(raw)
        return Extracted(
            usage=self.usage(),
            model=self.model,
            complete=self.finished,
            needs_review=why is not None,
            raw_usage=dict(raw),
            service_tier=_tier(raw),
            note=why,
        )

    def review(self) -> Extracted:
        return self.reported.review(self.model)


# ---------------------------------------------------------------------- wrapping
# what ``extract_response`` reads again after a crash (see ``jevons.capture.record``): the model,
# the usage block as received (``_reported``, without its ``model_dump``) and one
# ``{"type": "function"}`` per tool call of the choices (the messages are not logged)
_RESPONSE_NAMES = ("model", "usage", "choices")
_response_fields = operator.attrgetter(
    "model", "usage.__dict__", "usage.__pydantic_fields_set__", "usage.__pydantic_extra__", "choices")
_TOOL_CALL = {"type": "function"}


def _response_snapshot(response: Any) -> tuple[tuple[str, ...], tuple[Any, ...]] | None:
    """A ``ChatCompletionResponse``'s snapshot, as ``(names, values)`` of its top-level fields;
    ``None`` for anything else (no usage block...): recorded at once.

    The usage block keeps what ``_reported`` keeps of it: the fields the API sent (the SDK
    fills the others with defaults: 0 or ``Unset``) and the extra fields but null ones."""
    try:
        model, state, received, extra, choices = _response_fields(response)
    except AttributeError:
        return None
    block = {k: v for k, v in state.items() if k in received}
    if extra:
        block.update({k: v for k, v in extra.items() if v is not None})
    calls = 0
    if type(choices) is list:
        for choice in choices:
            tool_calls = getattr(getattr(choice, "message", None), "tool_calls", None)
            if isinstance(tool_calls, list | tuple):
                calls += len(tool_calls)
    kept = [{"message": {"tool_calls": [_TOOL_CALL] * calls}}] if calls else []
    return _RESPONSE_NAMES, (model, block, kept)


def _observe(call: Call, stream: Any) -> Any:
    """The SDK's own ``EventStream``/``EventStreamAsync``, its event generator observed."""
    return patch_stream(stream, call, MistralStreamState(), iterator_attr="generator")


def _always_stream(kwargs: dict[str, Any]) -> bool:
    return True


def _client_classes() -> tuple[type, ...]:
    """``Mistral`` lives in ``mistralai.client`` from SDK 2.x on, in ``mistralai`` before."""
    classes: list[type] = []
    for module in ("mistralai.client", "mistralai"):
        try:
            klass = getattr(import_module(module), "Mistral", None)
        except ImportError:
            continue
        if isinstance(klass, type):
            classes.append(klass)
    return tuple(classes)


class MistralAdapter:
    """Meters ``Mistral``: ``chat.complete``, ``chat.stream`` and their async forms
    ``complete_async`` / ``stream_async`` (``chat.parse`` goes through ``complete``)."""

    name = "mistral"

    def matches(self, client: object) -> bool:
        classes = _client_classes()
        return bool(classes) and isinstance(client, classes)

    def wrap(self, meter: Meter, client: T, attribution: Attribution, provider: str | None) -> T:
        prov = provider or PROVIDER
        call_spec = MethodSpec(API, prov, PROVIDER, snapshot=_response_snapshot)
        stream_spec = MethodSpec(API, prov, PROVIDER, stream=_observe, is_stream=_always_stream)
        c: Any = client
        new: Any = copy.copy(c)
        state = vars(new)
        # the original's finalizer closes the HTTP clients the copy shares: keep it alive
        state["_jevons_unwrapped"] = c
        for name in getattr(type(c), "_sub_sdk_map", {}):
            state.pop(name, None)  # the copy builds its own sub-SDKs (``chat``...) on first use
        config = getattr(new, "sdk_configuration", None)
        for http_client in (getattr(config, "client", None), getattr(config, "async_client", None)):
            if http_client is not None:
                install_attempt_hooks(http_client)
        chat = new.chat
        methods: dict[str, MethodSpec] = {
            "complete": call_spec, "complete_async": call_spec,
            "stream": stream_spec, "stream_async": stream_spec,
        }
        for name, spec in methods.items():
            original: Callable[..., Any] | None = getattr(chat, name, None)
            if callable(original):
                patch_method(chat, name, instrument(meter, original, spec, attribution, prov))
        return new  # type: ignore[no-any-return]


register_adapter(MistralAdapter())
