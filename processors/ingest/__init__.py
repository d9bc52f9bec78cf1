"""The ingest worker: image sources -> ``images.raw`` (and ``images.dlq``).

Layout (ARCHITECTURE.md, "Layout"):

- plumbing: :mod:`~processors.ingest.processor` (``run_ingest``), :mod:`~processors.ingest.
  backpressure`, :mod:`~processors.ingest.counters`, :mod:`~processors.ingest.interleaved`;
- :mod:`processors.ingest.sources`: what every source shares: the items a source yields, the
  one base class, the spec-option parser, the registry of spec names, the folder-watch loop;
- source families: :mod:`processors.ingest.synthetic`, :mod:`processors.ingest.files`,
  :mod:`processors.ingest.ztf`, :mod:`processors.ingest.surveys`.
"""
