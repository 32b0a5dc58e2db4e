"""Tributary attribution service: FastAPI over a Tributary index.

Modules: :mod:`.settings` (configuration), :mod:`.loading` (index + model, with compatibility
checks), :mod:`.engine` (the query pipeline, no HTTP), :mod:`.micro_batcher` (concurrent
requests into one forward/backward), :mod:`.batch_jobs` (persistent batch jobs),
:mod:`.errors` (the error envelope), :mod:`.metrics`, :mod:`.security`, :mod:`.routes`,
:mod:`.app` (``create_app(settings)``), :mod:`.cli` (``tributary serve``).
"""

__version__ = "0.1.0"
