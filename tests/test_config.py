"""Config fields that the official app fixes: they work as there, or a value we do not build is refused."""

from __future__ import annotations

import pytest

from bagel_lite.config import BagelConfig, LLMConfig, llm_from_json, llm_to_json, tiny


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


def test_the_built_model_has_qk_norm_and_an_untied_head():
    from bagel_lite.checkpoint import build

    model, _ = build(tiny())
    layer = model.language_model.model.layers[0].self_attn
    assert layer.q_norm is not None and layer.k_norm is not None
    lm = model.language_model
    assert lm.lm_head.weight.data_ptr() != lm.model.embed_tokens.weight.data_ptr()


def test_connector_act_other_than_the_official_is_refused():
    with pytest.raises(ValueError, match="connector_act 'relu' is unknown"):
        BagelConfig(connector_act="relu")
