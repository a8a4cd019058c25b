"""The replay server every capture test uses: real provider SDKs talking HTTP to recorded
responses on 127.0.0.1. See ``replay.server`` for the scripting API and the fixture layout.

Pytest fixtures (defined in ``tests/capture/conftest.py``):

Custom body framing: put a module ``framing_<name>.py`` in this package that calls
``register_framing(...)`` at import; it is imported with the package.

- ``replay`` — a started ``ReplayServer`` (one per session), reset before each test;
  ``replay.url`` is its base URL.
"""

import importlib
import pkgutil

from replay.server import (
    FIXTURES,
    RecordedRequest,
    ReplayServer,
    Reply,
    Route,
    fixture_json,
    load_fixture,
    register_framing,
    sse_bytes,
)

__all__ = [
    "FIXTURES",
    "RecordedRequest",
    "ReplayServer",
    "Reply",
    "Route",
    "fixture_json",
    "load_fixture",
    "register_framing",
    "sse_bytes",
]

# Framing modules (``framing_*.py`` beside this file, e.g. the AWS event-stream encoder) register
# themselves with ``register_framing`` on import, so fixtures naming them load anywhere.
for _info in pkgutil.iter_modules(__path__):
    if _info.name.startswith("framing_"):
        importlib.import_module(f"{__name__}.{_info.name}")
