"""jevons.capture.adapters."""
