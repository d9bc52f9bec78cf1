"""Synthetic and bundled images: sources that need no network and no files.

- :mod:`~processors.ingest.synthetic.sky`: the synthetic sky (``synthetic``), with ground truth;
- :mod:`~processors.ingest.synthetic.survey_sky`: that sky as several surveys see it
  (``synthetic?kind=survey``), still synthetic data;
- :mod:`~processors.ingest.synthetic.hubble`: cutouts of the bundled Hubble Deep Field
  (``hubble``);
- :mod:`~processors.ingest.synthetic.spec`: their spec options.
"""
