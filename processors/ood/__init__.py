"""Out-of-distribution maths shared by the scorer and the controller (pure, no I/O).

``detectors``: the Mahalanobis / energy / kNN detectors (raw scores, input checks).
``ensemble``: their calibration and the k-of-3 vote (re-exports the detectors).
``reference``: reference sets (what a ``calibration.updated`` event names by artifact id).
Both ``processors.score`` and ``processors.policies`` import from here; neither imports the other.
"""
