"""Supervised fine-tuning on a human-rated dataset with LML-IQA: the run (:func:`finetune`, in
``lml.py``), its network, EMA teacher and model file (``model.py``), its data (split, normalised
scores, crops; ``data.py``) and the spectral-residual saliency that picks each image's anchor crop
(``saliency.py``). It builds on models, objectives (the local-manifold loss), datasets and the
evaluation metrics."""
