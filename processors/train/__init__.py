"""The trainer worker: answers retrain requests with trained, gated detectors."""
