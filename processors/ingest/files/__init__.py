"""Local image files: ``dir:PATH_OR_GLOB`` folders, optionally watched.

- :mod:`~processors.ingest.files.folder`: the folder source and its spec;
- :mod:`~processors.ingest.files.decode`: one image file's bytes -> what a RawImage needs
  (also how the survey clients check their payloads).
"""
