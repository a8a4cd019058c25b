"""Stripe Billing meter events through the v2 high-throughput stream.

``POST {api_url}/v2/billing/meter_event_session`` (secret key) gives a session token valid for
15 minutes; ``POST {url}/v2/billing/meter_event_stream`` sends up to 100 events with it:
``{"events": [{"event_name", "identifier", "timestamp", "payload": {"stripe_customer_id",
"value"}}]}``. One meter event per non-zero usage bucket (the same disjoint buckets as the Lago
sink); ``identifier`` is ``<idempotency key>:<event name>``, which Stripe deduplicates on.
Values are strings, as the API wants. The session is renewed a minute before it expires, and
once more when the stream answers 401.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime

from jevons.events import Event
from jevons.sinks.base import Hold, HttpSink, Record, RejectedError, SinkUnavailable, TransientError, rfc3339
from jevons.sinks.buckets import bucket_counts, metric_codes

__all__ = ["StripeMeterSink"]


class StripeMeterSink(HttpSink):
    kind = "stripe"
    max_batch = 100

    def __init__(
        self,
        name: str,
        url: str,
        api_key: str | None,
        *,
        api_url: str | None = None,
        event_names: Mapping[str, str] | None = None,
        customer_key: str = "stripe_customer_id",
        timeout: float = 10.0,
        batch_size: int = 100,
    ) -> None:
        super().__init__(name, url, timeout=timeout, headers={"Content-Type": "application/json"})
        if not api_key:
            raise ValueError(f"sink {name}: Stripe needs a secret key (api_key_env)")
        self._api_key = api_key
        self.api_url = (api_url or url).rstrip("/")
        self.max_batch = max(1, min(batch_size, 100))
        self.event_names = metric_codes(name, event_names)
        self.customer_key = customer_key
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = threading.Lock()

    def prepare(self, event: Event) -> list[Record] | Hold:
        if not event.attributed:
            return Hold("unattributed", "no customer: no Stripe customer to bill")
        ts = rfc3339(event.timestamp)
        out: list[Record] = []
        for name, count in bucket_counts(event.usage, self.event_names):
            out.append({
                "event_name": name,
                "identifier": f"{event.idempotency_key}:{name}",
                "timestamp": ts,
                "payload": {self.customer_key: event.customer, "value": str(count)},
            })
        return out

    def _session(self, *, renew: bool = False) -> str:
        with self._token_lock:
            if not renew and self._token and time.time() < self._token_expires - 60:
                return self._token
            try:
                response = self._post(
                    f"{self.api_url}/v2/billing/meter_event_session",
                    content=b"{}",
                    headers={"Authorization": f"Bearer {self._api_key}"},
                )
            except RejectedError as exc:
                # a refused session is the account or key, not any event: stop the drain (a
                # rejection here would have the outbox bisect and dead-letter the backlog)
                raise SinkUnavailable(f"Stripe meter event session refused: {exc}") from exc
            data = response.json()
            self._token = str(data["authentication_token"])
            expires = data.get("expires_at")
            try:
                self._token_expires = datetime.fromisoformat(str(expires)).timestamp()
            except ValueError:
                self._token_expires = time.time() + 900
            return self._token

    def send(self, records: Sequence[Record]) -> None:
        body = json.dumps({"events": list(records)}, separators=(",", ":")).encode()
        url = f"{self.base_url}/v2/billing/meter_event_stream"
        for attempt in (1, 2):
            token = self._session(renew=attempt == 2)
            try:
                self._post(url, content=body, headers={"Authorization": f"Bearer {token}"})
                return
            except SinkUnavailable as exc:
                if "HTTP 401" not in str(exc) or attempt == 2:
                    raise
        raise TransientError("unreachable")  # pragma: no cover
