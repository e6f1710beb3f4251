"""Config fields that the official app fixes: they work as there, or a value we do not build is refused."""

from __future__ import annotations

import pytest

from bagel_lite.model.config import BagelConfig, LLMConfig, llm_from_json, llm_to_json, tiny


@pytest.mark.parametrize("field,value", [("qk_norm", False), ("tie_word_embeddings", True)])
def test_a_llm_field_we_do_not_build_is_refused(field, value):
    with pytest.raises(ValueError, match=f"{field}={value} is not supported"):
        LLMConfig(**{field: value})


@pytest.mark.parametrize("field,value", [("qk_norm", "yes"), ("tie_word_embeddings", 0)])
def test_a_llm_flag_must_be_a_bool(field, value):
    with pytest.raises(TypeError, match=field):
        LLMConfig(**{field: value})


def test_llm_config_json_gets_the_official_apps_values_whatever_it_says():
    """The official app sets qk_norm=True and tie_word_embeddings=False on top of llm_config.json."""
    data = {**llm_to_json(tiny().llm), "qk_norm": False, "tie_word_embeddings": True}
    cfg = llm_from_json(data)
    assert cfg.qk_norm is True and cfg.tie_word_embeddings is False


def test_the_built_model_applies_qk_norm():
    """The QK-norms act on the attention: scaling q_norm's weight (which multiplies every query) changes the
    hidden states, as it would not if the norm were built but skipped."""
    import torch

    from bagel_lite.loading.checkpoint import build

    model, _ = build(tiny())
    x = torch.randn(1, 6, model.config.llm.hidden_size, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(6)[None]
    with torch.no_grad():
        before, _ = model.hidden_states(x, None, positions, None)
        model.language_model.model.layers[0].self_attn.q_norm.weight.mul_(4.0)
        after, _ = model.hidden_states(x, None, positions, None)
    assert not torch.allclose(before, after, atol=1e-4)


def test_the_head_is_untied_from_the_embedding():
    """Changing the token embedding leaves the output head (and so the logits of a given state) unchanged."""
    import torch

    from bagel_lite.loading.checkpoint import build

    model, _ = build(tiny())
    lm = model.language_model
    state = torch.randn(model.config.llm.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.logits(state[None]).clone()
        lm.model.embed_tokens.weight.add_(1.0)
        assert torch.equal(model.logits(state[None]), logits)
    assert {"language_model.lm_head.weight", "language_model.model.embed_tokens.weight"} <= set(model.state_dict())


def test_connector_act_other_than_the_official_is_refused():
    with pytest.raises(ValueError, match="connector_act 'relu' is unknown"):
        BagelConfig(connector_act="relu")
