"""Measuring how well features predict human quality scores: the probe features of the protocol
(5 crops x 2 scales, cached; ``features.py``), closed-form ridge heads and the choice of their penalty
(``ridge.py``), the split protocol and its result files (``protocol.py``), the correlation metrics
(``metrics.py``), the BRISQUE baseline (``brisque.py``) and the comparison of methods under one budget
(``comparison.py``, the only module here that runs pretraining and fine-tuning)."""
