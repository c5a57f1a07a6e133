import random

import pytest
import torch

from codeinstruct.data.packing import collate_packed, collate_padded, pack_examples
from codeinstruct.data.sft import IGNORE_INDEX, TokenizedExample
from codeinstruct.modeling import preset_config


def test_best_fit_decreasing_never_splits_or_overfills():
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(500)]
    rows = pack_examples(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    # close to the lower bound on the number of rows
    assert len(rows) <= -(-sum(lengths) // 512) * 1.05 + 1
    assert pack_examples(lengths, 512) == rows  # deterministic


def test_decreasing_order_fills_rows_exactly_when_it_can():
    assert pack_examples([7, 6, 3, 4], 10) == [[0, 2], [1, 3]]
    assert pack_examples([4, 3, 6], 10) == [[2, 0], [1]]


def test_too_long_example_is_an_error():
    with pytest.raises(ValueError):
        pack_examples([5, 11], 10)


def _random_examples(n, vocab, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(5, 40)
        ids = [rng.randrange(vocab) for _ in range(length)]
        n_prompt = rng.randint(1, length - 1)
        out.append(TokenizedExample(ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:]))
    return out


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def tiny_model(request):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=300)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=request.param)
    return model.eval()


def _loss_sum(model, batch):
    from codeinstruct.train.step import batch_loss_sum

    return batch_loss_sum(model, batch, amp_dtype=None)


def test_packed_logits_equal_each_example_alone(tiny_model):
    examples = _random_examples(6, 300)
    batch = collate_packed([examples[:3], examples[3:]], pad_id=0)
    from codeinstruct.train.step import model_attention_mask

    mask = model_attention_mask(tiny_model, batch.attention_mask)
    with torch.no_grad():
        packed = tiny_model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids).logits
        for row, group in enumerate([examples[:3], examples[3:]]):
            start = 0
            for ex in group:
                alone = tiny_model(input_ids=torch.tensor([ex.input_ids])).logits[0]
                n = len(ex.input_ids)
                torch.testing.assert_close(packed[row, start : start + n], alone, atol=1e-5, rtol=0)
                start += n


def test_position_ids_alone_do_not_isolate_examples(tiny_model):
    """Why the 4-D mask exists: GPTBigCode given only position_ids lets packed examples see each other."""
    examples = _random_examples(2, 300, seed=1)
    batch = collate_packed([examples], pad_id=0)
    with torch.no_grad():
        leaky = tiny_model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
        second_alone = tiny_model(input_ids=torch.tensor([examples[1].input_ids])).logits[0]
    n0, n1 = len(examples[0].input_ids), len(examples[1].input_ids)
    assert not torch.allclose(leaky[0, n0 : n0 + n1], second_alone, atol=1e-3)


def test_packed_loss_equals_token_weighted_unpacked_loss(tiny_model):
    examples = _random_examples(8, 300, seed=2)
    packed = collate_packed([examples[:5], examples[5:]], pad_id=0)
    with torch.no_grad():
        packed_mean = _loss_sum(tiny_model, packed) / packed.n_targets
        sums, counts = [], []
        for ex in examples:
            b = collate_padded([ex], pad_id=0)
            sums.append(_loss_sum(tiny_model, b))
            counts.append(b.n_targets)
    assert packed.n_targets == sum(counts) == sum(ex.n_targets for ex in examples)
    torch.testing.assert_close(packed_mean, sum(sums) / sum(counts), atol=1e-5, rtol=1e-5)


def test_targets_never_cross_example_boundaries():
    a = TokenizedExample([1, 2, 3], [IGNORE_INDEX, 2, 3])
    b = TokenizedExample([4, 5, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 6, 7])
    batch = collate_packed([[a, b]], pad_id=0, pad_to_multiple=8)
    assert batch.targets[0].tolist() == [2, 3, IGNORE_INDEX, IGNORE_INDEX, 6, 7, IGNORE_INDEX, IGNORE_INDEX]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
    assert batch.n_targets == 4
    m = batch.attention_mask[0, 0]
    assert m[4, 3] and not m[4, 2] and m[2, 0] and not m[0, 1]
    assert m[7, 7] and not m[7, 6]  # padding sees only itself
