"""jevons.sinks."""
