"""Tributary indexer: the LoGra gradient core and the offline index builder.

Gradient core (one concept per module):

- :mod:`.module_selection` — which ``nn.Linear`` / ``Conv1D`` modules are tracked;
- :mod:`.projector` — LoGra projections (random, PCA, identity), safetensors persistence;
- :mod:`.kronecker_statistics` — activation / output-gradient covariances for PCA init;
- :mod:`.hooks` — forward/backward hooks with a register/release lifecycle;
- :mod:`.loss` — the summed target-token NLL;
- :mod:`.batching` — tokenised examples and right-padded batches;
- :mod:`.gradient_computer` — per-example projected gradients for a batch;
- :mod:`.rapidgrad` — RapidIn's RapidGrad compression;
- :mod:`.fisher` — streaming, mergeable projected Fisher;
- :mod:`.preconditioner` — damping, ``H^{-1}``, ``H^{-1/2}``, self-influence;
- :mod:`.scores` — the score variants ``influence``, ``relatif``, ``cosine``, ``grad_dot``.
"""

__version__ = "0.1.0"
