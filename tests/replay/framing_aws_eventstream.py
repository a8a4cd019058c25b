"""Registers the AWS event-stream framing (``replay.eventstream``) when ``replay`` is imported."""

import replay.eventstream  # noqa: F401  (registers "aws-eventstream" on import)
