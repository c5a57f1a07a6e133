import random

import pytest

from codeinstruct.data.fim import apply_fim, fim_split
from codeinstruct.data.pretrain import pretraining_blocks
from codeinstruct.prompts import FimTokens, encode_text, fim_prompt_ids

DOC = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"


def _enc(tok, text):
    return encode_text(tok, text)


def test_psm_and_spm_token_order_exactly(tokenizer):
    t = FimTokens.from_tokenizer(tokenizer)
    assert (t.prefix, t.middle, t.suffix, t.pad) == (1, 2, 3, 4)
    pre, mid, suf = "def add(a, b):\n", "    return a + b\n", "\nprint(add(1, 2))\n"
    assert fim_prompt_ids(tokenizer, pre, suf) + _enc(tokenizer, mid) == (
        [1] + _enc(tokenizer, pre) + [3] + _enc(tokenizer, suf) + [2] + _enc(tokenizer, mid)
    )
    assert fim_prompt_ids(tokenizer, pre, suf, spm=True) + _enc(tokenizer, mid) == (
        [1, 3] + _enc(tokenizer, suf) + [2] + _enc(tokenizer, pre) + _enc(tokenizer, mid)
    )


def test_apply_fim_produces_both_orders_and_reassembles_the_document(tokenizer):
    t = FimTokens.from_tokenizer(tokenizer)
    rng = random.Random(0)
    modes = set()
    for _ in range(200):
        ids = apply_fim(DOC, tokenizer, rng, fim_rate=1.0, fim_spm_rate=0.5)
        assert ids[0] == t.prefix and ids.count(t.middle) == 1 and ids.count(t.suffix) == 1
        if ids[1] == t.suffix:
            modes.add("spm")
            m = ids.index(t.middle)
            suffix, prefix_middle = tokenizer.decode(ids[2:m]), tokenizer.decode(ids[m + 1 :])
            assert prefix_middle + suffix == DOC
        else:
            modes.add("psm")
            s, m = ids.index(t.suffix), ids.index(t.middle)
            prefix, suffix, middle = (
                tokenizer.decode(ids[1:s]),
                tokenizer.decode(ids[s + 1 : m]),
                tokenizer.decode(ids[m + 1 :]),
            )
            assert prefix + middle + suffix == DOC
    assert modes == {"psm", "spm"}


def test_fim_rate_zero_is_plain_and_one_is_all_fim(tokenizer):
    rng = random.Random(1)
    assert all(apply_fim(DOC, tokenizer, rng, fim_rate=0.0) == _enc(tokenizer, DOC) for _ in range(50))
    assert all(apply_fim(DOC, tokenizer, rng, fim_rate=1.0)[0] == 1 for _ in range(50))
    half = [apply_fim(DOC, tokenizer, rng, fim_rate=0.5)[0] == 1 for _ in range(400)]
    assert 150 < sum(half) < 250


def test_same_seed_same_transform(tokenizer):
    a = [apply_fim(DOC, tokenizer, random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert len({tuple(apply_fim(DOC, tokenizer, random.Random(s), fim_rate=1.0)) for s in range(20)}) > 10


def test_split_points_cover_the_whole_document():
    rng = random.Random(3)
    for _ in range(100):
        parts = fim_split(DOC, rng)
        assert "".join(parts) == DOC


def test_document_text_that_looks_like_a_control_token_stays_text(tokenizer):
    ids = apply_fim("x = '<fim_middle>'\n", tokenizer, random.Random(0), fim_rate=0.0)
    assert 2 not in ids


def test_pretraining_blocks_join_documents_with_eos_and_redraw_fim_per_epoch(tokenizer):
    docs = [DOC, "x = 1\n", "y = [i for i in range(3)]\n"]
    plain = pretraining_blocks(docs, tokenizer, 16, fim_rate=0.0)
    stream = [i for b in plain for i in b.input_ids]
    assert sorted(stream) == sorted(_enc(tokenizer, DOC + "x = 1\n" + docs[2]) + [0, 0, 0])
    assert stream.count(0) == 3 and stream[-1] == 0
    texts = tokenizer.decode(stream).split("<|endoftext|>")[:-1]
    assert sorted(texts) == sorted(docs)
    assert all(len(b.input_ids) == 16 for b in plain[:-1]) and all(b.labels == b.input_ids for b in plain)
    e0 = pretraining_blocks(docs * 5, tokenizer, 32, fim_rate=1.0, seed=0, epoch=0)
    e1 = pretraining_blocks(docs * 5, tokenizer, 32, fim_rate=1.0, seed=0, epoch=1, n_blocks=len(e0))
    assert len(e1) <= len(e0) and e0 != e1
    assert e0 == pretraining_blocks(docs * 5, tokenizer, 32, fim_rate=1.0, seed=0, epoch=0)


def test_tokenizer_without_fim_tokens_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from codeinstruct.errors import CodeinstructError

    core = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="a")
    with pytest.raises(CodeinstructError, match="no <fim_prefix> token"):
        FimTokens.from_tokenizer(tok)
