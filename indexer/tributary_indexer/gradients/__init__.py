"""Per-example projected gradients: tracked modules, LoGra projections, hooks, objectives,
RapidGrad."""
