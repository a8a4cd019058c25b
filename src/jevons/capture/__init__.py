"""jevons.capture."""
