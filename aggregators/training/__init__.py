"""Training of learned set aggregators (``facecoreset train``).

Modules: ``bank`` (feature bank files), ``sampler`` (training sets), ``heads`` (margin
losses), ``validation`` (held-out metrics for model selection), ``trainer`` (the loop,
checkpoints, resume, DDP), ``cli`` (the sub-command). Nothing heavy is imported here.
"""

__all__: list[str] = []
