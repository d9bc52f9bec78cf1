"""The YOLO detector kit shared by detect (inference) and train (training).

Raster rendering of cutouts, the offline ultralytics environment, the YOLO localizer, source
extraction (the baseline localizer), the YOLO dataset writer, the training-sample artifact
format, mAP50 evaluation and the paired bootstrap comparison of two localizers. Imports only
``processors.core``: the two workers that use it never import each other.
"""
