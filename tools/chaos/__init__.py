"""Fault scenarios against ``skyloop run`` on the embedded stack (``python -m tools.chaos``)."""
