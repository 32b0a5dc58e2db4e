"""The quality benchmarks' method rows: their names key the score cache, so a setting that changes
the scores must change the name."""

from __future__ import annotations

from benchmarks.quality.methods import LoGraMethod, configuration_grid


def test_every_grid_row_has_its_own_name_and_the_presence_core_is_in_it():
    default = LoGraMethod.default()
    grid = configuration_grid(default)
    names = [m.name for m in [default, *grid]]
    assert len(set(names)) == len(names), "two rows share a name, so they would share a cache file"
    by_weight = default.replace(presence_selectivity=None)
    whole_span = by_weight.replace(presence_core=0.0)
    assert default.ranking == "span_gated" and default.presence_selectivity is not None
    assert by_weight in grid and whole_span in grid
    assert default.name.endswith(f"core=share×{default.presence_selectivity:g}")
    assert by_weight.name.endswith(f"core={default.presence_core:g}") and whole_span.name.endswith(
        "core=0"
    )
    # a ranking without the gate ignores the core, and its name says nothing about it
    plain = default.replace(ranking="span_saturated")
    assert (
        "core" not in plain.name
        and plain.name == plain.replace(presence_core=0.0, presence_selectivity=None).name
    )
