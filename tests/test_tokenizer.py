from hypothesis import given, settings
from hypothesis import strategies as st

from codeinstruct.tokenizer import SPECIAL_TOKENS


def test_starcoder_special_tokens_at_ids_0_to_18(tokenizer):
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(19)] == SPECIAL_TOKENS
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.unk_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == 0
    assert tokenizer.pad_token is None


def test_auto_tokenizer_loads_the_saved_directory(tokenizer_dir, tokenizer):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = "def f(x):\n    return x  # 123\n<fim_prefix>"
    assert auto(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert auto.convert_tokens_to_ids("<fim_middle>") == 2


def test_special_tokens_are_single_ids_and_digits_split(tokenizer):
    ids = tokenizer("<fim_prefix>a<fim_suffix>b<fim_middle>", add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and 3 in ids and ids[-1] == 2
    assert len(tokenizer("12345", add_special_tokens=False)["input_ids"]) == 5


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
    | st.text(alphabet=" \t\n\r\x0bab{}();:=_0123456789ü中🙂", max_size=200)
)
def test_decode_of_encode_gives_the_text_back(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
