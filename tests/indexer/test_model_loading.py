"""Model loading helpers: the context length read from the config, and the token cap it sets."""

from __future__ import annotations

import logging

import pytest
import torch
from tributary_indexer.model_loading import capped_max_tokens, context_length, load_causal_lm

from tests.index_fixtures import build_model_dir


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_context_length_comes_from_the_config(tmp_path, arch, caplog):
    model = load_causal_lm(build_model_dir(tmp_path / arch, arch), torch.device("cpu"))
    assert context_length(model) == 256  # n_positions (GPT-2) / max_position_embeddings (Llama)
    assert capped_max_tokens(128, model, "max_tokens") == 128
    with caplog.at_level(logging.INFO, logger="tributary_indexer.model_loading"):
        assert capped_max_tokens(512, model, "max_tokens") == 256
    assert "max_tokens 512 is more than the model's context length 256" in caplog.text


def test_a_config_without_a_limit_caps_nothing():
    model = torch.nn.Linear(2, 2)  # no config at all
    assert context_length(model) is None
    assert capped_max_tokens(10_000, model, "max_tokens") == 10_000
