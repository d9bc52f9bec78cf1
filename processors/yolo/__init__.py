"""The YOLO detector kit shared by detect (inference) and train (training).

Raster rendering of cutouts, the offline ultralytics environment, the YOLO localizer, the YOLO
dataset writer, the training-sample artifact format and mAP50 evaluation. Imports only
``processors.core``: the two workers that use it never import each other.
"""
