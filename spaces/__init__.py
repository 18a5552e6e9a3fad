"""Search spaces and what they build: optimizer variants, schedules, parameter groups.

``build(params, model, ...)`` turns one trial's resolved params into torch objects; the
exporter turns the same params into source code through the same recipes. Nothing here
imports torch until a recipe is instantiated: the coordinator, which only samples, never
loads it.
"""

from optsearch.spaces.build import BuildContext, build, build_optimizer, build_scheduler
from optsearch.spaces.space import Space

__all__ = ["BuildContext", "Space", "build", "build_optimizer", "build_scheduler"]
