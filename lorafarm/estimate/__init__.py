"""How long a LoRA job takes: learned step times per job shape, a FLOPs prior, ETAs.

Pure (no Ray, no torch): the scheduler and ``lorafarm simulate`` use the same
:class:`Estimator`, so what the replay measures is what the live service gets.

* :mod:`.shape`: the shape key (what decides a step's time) and planned steps, from a spec;
* :mod:`.prior`: a FLOPs-based step time for a shape nothing similar has run with yet;
* :mod:`.estimator`: learned step times per shape, remaining time of running jobs;
* :mod:`.persist`: ``<store>/_service/estimates.json``, so estimates survive a restart;
* :mod:`.eta`: ``eta_start``/``eta_end`` from the queue ahead and the estimates.
"""

from .estimator import Estimate, Estimator, request_estimate
from .eta import queue_etas
from .prior import flops_prior_step_s, model_params
from .shape import Shape, planned_steps, shape_of

__all__ = ["Estimate", "Estimator", "Shape", "flops_prior_step_s", "model_params", "planned_steps", "queue_etas",
           "request_estimate", "shape_of"]
