"""jevons.prices.sources."""
