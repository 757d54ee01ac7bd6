"""Self-supervised pretraining: the loop (:func:`pretrain`, read top to bottom in ``loop.py``), the
pretraining dataset (pristine folders -> structured items, ``data.py``), the network and its optimiser
settings (``model.py``), crash-safe checkpoints and resume (``checkpoint.py``), the ``torchrun`` set-up
(``distributed.py``), the run log (``runlog.py``) and the export of a trained encoder (``export.py``).
It builds on distortions, objectives, models and configs, and nothing below it imports it."""

from shamisa.training.checkpoint import read_checkpoint
from shamisa.training.export import export_encoder
from shamisa.training.loop import pretrain

__all__ = ["export_encoder", "pretrain", "read_checkpoint"]
