import pytest

from codeinstruct.config import BUNDLED_RECIPES, load_recipe, recipe_path
from codeinstruct.errors import CodeinstructError


def test_bundled_recipes_validate():
    names = sorted(p.stem for p in BUNDLED_RECIPES.glob("*.yaml"))
    assert names == ["starcoder-gpteacher", "starcoder-gpteacher-fim", "tiny-cpu", "tiny-pretrain-cpu"]
    card = load_recipe(recipe_path("starcoder-gpteacher"))
    assert (card.model.source, card.data.max_length, card.train.epochs, card.train.lr) == (
        "bigcode/starcoder",
        1024,
        3,
        2e-5,
    )
    assert (card.train.precision, card.distributed.strategy, card.distributed.gpus) == ("bf16", "fsdp", 8)
    assert load_recipe(recipe_path("tiny-cpu")).model.source.startswith("preset:")
    # the card's recipe is reproduced as written: no FIM mix unless a recipe asks for one
    assert card.data.fim_mix is None
    fim = load_recipe(recipe_path("starcoder-gpteacher-fim"))
    assert fim.data.fim_mix is not None and (fim.data.fim_mix.fraction, fim.data.fim_mix.loss) == (0.3, "middle")
    assert fim.model_dump(exclude={"name", "data"}) == card.model_dump(exclude={"name", "data"})
    assert fim.data.model_dump(exclude={"fim_mix"}) == card.data.model_dump(exclude={"fim_mix"})


def test_dotted_overrides_are_typed(tmp_path):
    r = load_recipe(
        recipe_path("tiny-cpu"), ["train.lr=1e-4", "data.packing=false", "train.max_grad_norm=null", "name=x"]
    )
    assert r.train.lr == 1e-4 and r.data.packing is False and r.train.max_grad_norm is None and r.name == "x"
    assert "lr: 0.0001" in r.to_yaml()


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lrr=1", "train.lrr: unknown key"),
        ("train.lr=fast", "train.lr: Input should be a valid number"),
        ("train.epochs=0", "train.epochs: Input should be greater than or equal to 1"),
        ("data.overlong=cut", "data.overlong: Input should be 'drop' or 'truncate'"),
        ("trainlr", "expected key=value"),
    ],
)
def test_bad_overrides_say_which_key(override, message):
    with pytest.raises(CodeinstructError, match=message):
        load_recipe(recipe_path("tiny-cpu"), [override])


def test_bad_yaml_names_the_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(CodeinstructError, match=r"r.yaml: line \d+: invalid YAML"):
        load_recipe(p)


def test_unknown_recipe_name_lists_bundled():
    with pytest.raises(
        CodeinstructError, match="bundled: starcoder-gpteacher, starcoder-gpteacher-fim, tiny-cpu, tiny-pretrain-cpu"
    ):
        recipe_path("nope")
