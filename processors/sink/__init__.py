"""skyloop package."""
