"""Training tasks behind one small interface (``base.Trainer``); user code plugs in."""

from optsearch.trainers.base import FunctionTrainer, Trainer, TrialContext
from optsearch.trainers.registry import BUILTIN, check_options, load_trainer

__all__ = ["BUILTIN", "FunctionTrainer", "Trainer", "TrialContext", "check_options", "load_trainer"]
