"""An in-process stand-in for the OpenAI and Anthropic HTTP APIs, for ``jevons demo``.

The real SDK clients are given ``http_client=StandIn().http_client("openai")`` (an HTTP client of
the httpx flavour that SDK version uses, ``httpx`` or ``httpx2``, over a ``MockTransport``),
so every request goes through the SDK, the jevons adapters and the Meter exactly as in
production, and is answered here with a response in the provider's own wire shape, usage block
included: OpenAI's ``prompt_tokens`` (cached tokens inside it, in ``prompt_tokens_details``) and
``completion_tokens`` (reasoning inside it); Anthropic's disjoint ``input_tokens`` /
``cache_read_input_tokens`` / ``cache_creation_input_tokens`` and ``output_tokens`` (thinking
inside it).

What a call "used" is told by the caller in the ``x-standin-usage`` header
(``input=12000,output=4500,reasoning=4000,cached=6000,cache_write=1000``), so that a demo can
stand for 100k-token agent contexts without sending 400 kB prompts; without the header the
prompt is estimated from the request's text (4 characters a token).
"""

from __future__ import annotations

import importlib
import itertools
import json
import threading
from types import ModuleType
from typing import Any

__all__ = ["USAGE_HEADER", "StandIn", "http_module", "usage_header"]

USAGE_HEADER = "x-standin-usage"


def usage_header(
    *, input: int, output: int, reasoning: int = 0, cached: int = 0, cache_write: int = 0
) -> dict[str, str]:
    """The header that tells the stand-in what a call used (canonical counts: ``input``
    includes cached and cache-write tokens, ``output`` includes reasoning)."""
    return {
        USAGE_HEADER: f"input={input},output={output},reasoning={reasoning},cached={cached},"
        f"cache_write={cache_write}"
    }


def _text_of(body: dict[str, Any]) -> str:
    parts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        parts.append(system)
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return " ".join(parts)


def http_module(sdk: str) -> ModuleType:
    """The httpx flavour an SDK package (``openai``, ``anthropic``) is built on."""
    base = importlib.import_module(f"{sdk}._base_client")
    module = getattr(base, "httpx2", None) or getattr(base, "httpx", None)
    if not isinstance(module, ModuleType):
        module = importlib.import_module("httpx")
    return module


class StandIn:
    """Answers ``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages`` (Anthropic)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.requests = 0

    def transport(self, module: ModuleType | None = None) -> Any:
        """A ``MockTransport`` of ``module`` (default ``httpx``) answering with this stand-in."""
        mod = module or importlib.import_module("httpx")
        return mod.MockTransport(lambda request: self.handle(request, mod))

    def http_client(self, sdk: str) -> Any:
        """An HTTP client to pass as ``http_client=`` to the ``sdk`` package's client."""
        mod = http_module(sdk)
        return mod.Client(transport=self.transport(mod))

    def _usage(self, request: Any, body: dict[str, Any]) -> dict[str, int]:
        raw = request.headers.get(USAGE_HEADER)
        if raw:
            out = {k: int(v) for k, v in (p.split("=", 1) for p in raw.split(","))}
        else:
            limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
            out = {"input": max(1, len(_text_of(body)) // 4), "output": min(limit, 120)}
        for key in ("reasoning", "cached", "cache_write"):
            out.setdefault(key, 0)
        return out

    def handle(self, request: Any, mod: ModuleType | None = None) -> Any:
        """Answer one request (``mod``: the httpx flavour of the request, default ``httpx``)."""
        httpx = mod or importlib.import_module("httpx")
        with self._lock:
            self.requests += 1
            n = next(self._ids)
        try:
            body = json.loads(request.content or b"{}")
        except ValueError:
            return httpx.Response(400, json={"error": {"message": "body is not JSON"}})
        path = request.url.path
        if request.method == "POST" and path.endswith("/chat/completions"):
            return httpx.Response(200, json=self._openai(n, body, self._usage(request, body)))
        if request.method == "POST" and path.endswith("/messages"):
            return httpx.Response(200, json=self._anthropic(n, body, self._usage(request, body)))
        return httpx.Response(404, json={"error": {"message": f"no route {request.method} {path}"}})

    @staticmethod
    def _openai(n: int, body: dict[str, Any], u: dict[str, int]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-standin{n:08d}",
            "object": "chat.completion",
            "created": 1_767_225_600 + n,
            "model": body.get("model", "unknown"),
            "system_fingerprint": "fp_standin",
            "service_tier": "default",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Done. (stand-in reply)", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": u["input"],
                "completion_tokens": u["output"],
                "total_tokens": u["input"] + u["output"],
                "prompt_tokens_details": {"cached_tokens": u["cached"], "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": u["reasoning"],
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
        }

    @staticmethod
    def _anthropic(n: int, body: dict[str, Any], u: dict[str, int]) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if u["reasoning"]:
            content.append(
                {"type": "thinking", "thinking": "(stand-in reasoning)", "signature": "c3RhbmRpbg=="}
            )
        content.append({"type": "text", "text": "Done. (stand-in reply)"})
        return {
            "id": f"msg_standin{n:08d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": content,
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": u["input"] - u["cached"] - u["cache_write"],
                "cache_read_input_tokens": u["cached"],
                "cache_creation_input_tokens": u["cache_write"],
                "output_tokens": u["output"],
                "service_tier": "standard",
            },
        }
