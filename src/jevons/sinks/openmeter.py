"""OpenMeter: CloudEvents 1.0 in a batch (``application/cloudevents-batch+json``).

One CloudEvent per call to ``POST {url}/api/v1/events``: ``id`` = the idempotency key,
``source`` = the configured source (default ``jevons``); OpenMeter deduplicates on
(``id``, ``source``). ``subject`` is the customer, ``type`` the configured event type
(default ``llm.call``); ``data`` carries every token count, the model and provider, and the
cost (USD as a decimal string, ``null`` when unpriced) with its price version, so meters can
aggregate ``$.input_tokens`` or group by ``$.model``. ``data`` also carries the billable
buckets (``jevons.sinks.buckets``) as ``<bucket>_billable`` fields, zeros included: every
default bucket and ``requests``, and the opt-in token classes (``reasoning``, ``audio_input``…)
given a field name in ``metric_codes``, which then leave their parent's field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jevons.events import Event
from jevons.sinks.base import Hold, HttpSink, Record, rfc3339
from jevons.sinks.buckets import BUCKETS, CARVED_FROM, bucket_counts, metric_codes
from jevons.sinks.lago import decimal_str
from jevons.usage import USAGE_FIELDS

__all__ = ["OpenMeterSink"]

_DEFAULT_FIELDS = {bucket: f"{bucket}_billable" for bucket in BUCKETS}
#: what ``data`` holds besides the billable fields (a billable field must not replace one)
_OTHER_FIELDS = frozenset({*USAGE_FIELDS, "provider", "model", "model_requested", "status", "cost_usd",
                           "cost_status", "price_version", "feature", "run_id"})


class OpenMeterSink(HttpSink):
    kind = "openmeter"
    max_batch = 100

    def __init__(
        self,
        name: str,
        url: str,
        api_key: str | None,
        *,
        source: str = "jevons",
        event_type: str = "llm.call",
        timeout: float = 10.0,
        batch_size: int = 100,
        billable_fields: Mapping[str, str] | None = None,
    ) -> None:
        headers = {"Content-Type": "application/cloudevents-batch+json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        super().__init__(name, url, timeout=timeout, headers=headers)
        self.source = source
        self.event_type = event_type
        self.max_batch = max(1, batch_size)
        #: bucket -> ``data`` field: ``<bucket>_billable`` for the default buckets, then the config's
        renamed = sorted(set(billable_fields or {}) & set(_DEFAULT_FIELDS))
        if renamed:
            # e.g. a Lago table's codes copied here: renaming <bucket>_billable would leave the
            # meters built on those fields counting nothing, silently
            raise ValueError(f"sink {name}: OpenMeter's default fields keep their names "
                             f"(<bucket>_billable); metric_codes may only add the opt-in token classes "
                             f"({', '.join(CARVED_FROM)}), not rename {renamed}")
        self.billable_fields = metric_codes(name, billable_fields, _DEFAULT_FIELDS)
        taken = set(self.billable_fields.values()) & _OTHER_FIELDS
        if taken:
            raise ValueError(f"sink {name}: billable field(s) {sorted(taken)} would overwrite the "
                             "event's own data fields of that name")

    def prepare(self, event: Event) -> list[Record] | Hold:
        if not event.attributed:
            return Hold("unattributed", "no customer: no OpenMeter subject")
        data: dict[str, Any] = {
            "provider": event.provider,
            "model": event.model or event.model_requested,
            "model_requested": event.model_requested,
            "status": event.status,
            **event.usage.to_dict(),
        }
        for field, count in bucket_counts(event.usage, self.billable_fields, zeros=True):
            data[field] = count
        total = event.cost.total_usd
        data["cost_usd"] = None if total is None else decimal_str(total)
        data["cost_status"] = event.cost.status
        data["price_version"] = event.cost.price_version
        if event.feature:
            data["feature"] = event.feature
        if event.run_id:
            data["run_id"] = event.run_id
        return [{
            "specversion": "1.0",
            "id": event.idempotency_key,
            "source": self.source,
            "type": self.event_type,
            "subject": event.customer,
            "time": rfc3339(event.timestamp),
            "datacontenttype": "application/json",
            "data": data,
        }]

    def send(self, records: Sequence[Record]) -> None:
        body = json.dumps(list(records), separators=(",", ":")).encode()
        self._post(f"{self.base_url}/api/v1/events", content=body, headers={})
