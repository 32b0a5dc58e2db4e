"""Tributary indexer: the LoGra gradient core, the offline index builder and the query layer.

Subpackages, each one concept (``docs/architecture.md`` draws the imports between them):

- :mod:`.data` — corpus records, tokenisation, tokenised examples and padded batches, the
  example store;
- :mod:`.gradients` — tracked modules, LoGra projections, hooks, the objectives, RapidGrad,
  per-example projected gradients;
- :mod:`.hessian` — the Fisher, the Kronecker statistics for PCA projections, the
  preconditioner and the score variants;
- :mod:`.build` — the index builder, its plan, staging, shards, the index layout and the
  manifest with its verification;
- :mod:`.query` — an opened index, search over its shards and the rankings.

Top level: :mod:`.config` (the build configuration), :mod:`.errors`, :mod:`.model_loading`,
:mod:`.progress`, :mod:`.atomic_io` and :mod:`.cli` (``tributary index``).
"""

__version__ = "0.1.0"
