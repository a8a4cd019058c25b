"""jevons.prices."""
