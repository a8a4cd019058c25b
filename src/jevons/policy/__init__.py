"""jevons.policy."""
