"""Scoring images with a trained model: the model card (``card.py``) and model file
(``model_file.py``), image preparation (``preprocess.py``), the :class:`QualityModel` that scores
paths, arrays and tensors and its :func:`load` (``quality_model.py``), the pyiqa-style metric
(``metric.py``) and fitting a head into a new model file (``fit.py``). It builds on models, datasets
and evaluation (features, ridge heads, metrics); the package's public API (``shamisa.load``,
``shamisa.create_metric``, ``shamisa.list_models``) comes from here."""
