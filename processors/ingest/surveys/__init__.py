"""Survey HTTP clients: ``SURVEY:TARGETS.csv`` or ``SURVEY:cone:RA,DEC,RADIUS`` specs.

- :mod:`~processors.ingest.surveys.spec`: the spec and the options every survey takes;
- :mod:`~processors.ingest.surveys.source`: a survey as an image source (targets in, cutouts
  or dead letters out);
- :mod:`~processors.ingest.surveys.http`: rate-limited, retried HTTP with a circuit breaker;
- :mod:`~processors.ingest.surveys.payloads`: is a response an image we can score;
- :mod:`~processors.ingest.surveys.targets`, :mod:`~processors.ingest.surveys.cone`: where
  the targets come from (a CSV, a cone search);
- one module per service: ``sdss``, ``decals``, ``panstarrs``, ``hst``, ``galaxy_zoo``,
  ``ztf_irsa`` (ZTF science images from IRSA; the ``ztf:`` alert packets are
  :mod:`processors.ingest.ztf`).
"""
