"""jevons.insight."""
