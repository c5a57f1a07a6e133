"""`codeinstruct plan`: what fits for the card's recipe, and estimates that move the right way."""

import json

from codeinstruct.config import load_recipe, recipe_path
from codeinstruct.train.plan import GIB, estimate, model_shape


def test_the_cards_recipe_fits_on_8_gpus_and_only_lora_fits_on_one(cli):
    code, out, err = cli("plan", "starcoder-gpteacher", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["gpus"] == 8 and abs(report["parameters"] / 15.5e9 - 1) < 0.01
    assert report["recipe"] == {
        "method": "full",
        "activation_checkpointing": True,
        "total_gib": report["recipe"]["total_gib"],
        "fits": True,
    }
    assert 25 < report["recipe"]["total_gib"] < 60  # 16 bytes/param over 8 GPUs is 29 GiB before activations
    code, out, err = cli("plan", "starcoder-gpteacher", "--gpus", "1")
    assert code == 0, err
    assert "does NOT fit" in out and "what fits: model.method=lora" in out


def test_estimates_grow_with_the_batch_and_shrink_with_gpus_and_checkpointing():
    shape = model_shape(load_recipe(recipe_path("starcoder-gpteacher")))
    base = dict(method="full", checkpointing=False, gpus=8, batch_size=1, max_length=1024)
    one = estimate(shape, **base)
    assert estimate(shape, **{**base, "batch_size": 4}).total > one.total
    assert estimate(shape, **{**base, "gpus": 16}).total < one.total
    assert estimate(shape, **{**base, "checkpointing": True}).activations < one.activations / 4
    lora = estimate(shape, **{**base, "method": "lora"})
    assert lora.optimizer < one.optimizer / 100 and lora.gradients < one.gradients / 100
    assert one.optimizer == 2 * one.gradients == 2 * one.parameters  # AdamW's two fp32 moments
    assert abs(one.parameters * 8 / GIB - 4 * 15.517e9 / GIB) < 1


def test_missing_model_is_a_clear_error(cli, tmp_path):
    code, out, err = cli("plan", "tiny-cpu", f"model.source={tmp_path / 'nothing'}")
    assert code == 1 and "no config.json" in err and "Traceback" not in err
