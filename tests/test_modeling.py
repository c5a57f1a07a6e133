import pytest

from codeinstruct.errors import CodeinstructError
from codeinstruct.modeling import PRESETS, count_parameters, preset_config


def test_starcoder_preset_is_15_5b_parameters_without_allocating():
    config = preset_config("starcoder")
    assert (config.n_layer, config.n_embd, config.n_head, config.n_positions, config.vocab_size) == (
        40,
        6144,
        48,
        8192,
        49152,
    )
    assert config.multi_query
    n = count_parameters(config)
    assert abs(n - 15.5e9) / 15.5e9 < 0.01, n


def test_presets_are_multi_query_gpt_bigcode():
    for name in PRESETS:
        config = preset_config(name, vocab_size=1000)
        assert config.model_type == "gpt_bigcode" and config.multi_query
    assert count_parameters(preset_config("tiny", vocab_size=1000)) < count_parameters(
        preset_config("small", vocab_size=1000)
    )


def test_unknown_preset():
    with pytest.raises(CodeinstructError, match="unknown model preset 'huge'"):
        preset_config("huge")
