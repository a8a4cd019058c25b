"""jevons.cli."""
