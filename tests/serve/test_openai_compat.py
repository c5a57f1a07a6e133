"""OpenAI requests in engine terms: raw FIM prompts, the chat-to-Alpaca mapping, streamed response text, limits."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codeinstruct.infer.generate import ResponseStream
from codeinstruct.prompts import (
    FimTokens,
    encode_text,
    extract_response,
    fim_prompt_ids,
    format_prompt,
)
from codeinstruct.serve.openai_compat import (
    alpaca_from_messages,
    encode_raw_prompt,
    sampling_params,
)
from codeinstruct.serve.schemas import (
    ApiError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
)


def test_raw_fim_prompt_is_encoded_with_control_tokens_exactly_as_training_built_it(tokenizer):
    prefix, suffix = "def area(r):\n    return ", "\n\nprint(area(2))\n"
    ids, fim = encode_raw_prompt(tokenizer, f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>")
    assert fim
    assert ids == fim_prompt_ids(tokenizer, prefix, suffix)
    t = FimTokens.from_tokenizer(tokenizer)
    assert ids[0] == t.prefix and ids[-1] == t.middle


def test_plain_prompts_are_plain_text_and_eos_text_is_a_control_token(tokenizer):
    ids, fim = encode_raw_prompt(tokenizer, "x = 1\n")
    assert (ids, fim) == (encode_text(tokenizer, "x = 1\n"), False)
    ids, fim = encode_raw_prompt(tokenizer, "a<|endoftext|>b")
    assert not fim
    assert ids == [*encode_text(tokenizer, "a"), tokenizer.eos_token_id, *encode_text(tokenizer, "b")]


def _messages(*pairs):
    return [ChatMessage(role=role, content=content) for role, content in pairs]


def test_one_user_message_is_the_no_input_alpaca_prompt():
    assert alpaca_from_messages(_messages(("user", "Reverse a list."))) == ("Reverse a list.", "")


def test_system_text_and_earlier_turns_become_the_input_in_order():
    instruction, context = alpaca_from_messages(
        _messages(
            ("system", "Answer in Python."),
            ("user", "Write hello world."),
            ("assistant", "print('hello')"),
            ("user", "Now put it in a function."),
        )
    )
    assert instruction == "Now put it in a function."
    assert context == "Answer in Python.\n\nUser: Write hello world.\n\nAssistant: print('hello')"
    assert format_prompt(instruction, context).count("### Input:") == 1


def test_text_content_parts_are_joined_and_other_parts_refused():
    parts = ChatMessage.model_validate(
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    )
    assert alpaca_from_messages([parts]) == ("ab", "")
    image = ChatMessage.model_validate({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]})
    with pytest.raises(ApiError, match="only text content"):
        alpaca_from_messages([image])


@pytest.mark.parametrize(
    "roles,needle",
    [
        (("user", "assistant"), "last message must be from the user"),
        (("tool", "user"), "'tool' messages are not supported"),
    ],
)
def test_conversations_that_cannot_be_an_alpaca_prompt_are_refused(roles, needle):
    with pytest.raises(ApiError, match=needle) as e:
        alpaca_from_messages(_messages(*[(r, "x") for r in roles]))
    assert e.value.status == 400


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab \n\t#", max_size=30), st.lists(st.integers(0, 30), max_size=6))
def test_streamed_response_text_adds_up_to_extract_response(generated, cuts):
    cuts = sorted({min(c, len(generated)) for c in cuts})
    pieces = [generated[a:b] for a, b in zip([0, *cuts], [*cuts, len(generated)])]
    stream = ResponseStream()
    shown = "".join(stream.push(p) for p in pieces)
    assert shown == stream.text == extract_response(generated)


def test_prompts_that_fill_the_context_are_refused_and_max_tokens_is_capped():
    request = CompletionRequest(prompt="x", max_tokens=500, seed=1)
    with pytest.raises(ApiError, match="the prompt has 1024 tokens; the model's context is 1024") as e:
        sampling_params(request, 1024, 1024, 500, "prompt")
    assert (e.value.status, e.value.code) == (400, "context_length_exceeded")
    assert sampling_params(request, 1000, 1024, 500, "prompt").max_new_tokens == 24
    assert sampling_params(request, 10, 1024, 500, "prompt").max_new_tokens == 500
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "x"}])
    assert sampling_params(chat, 24, 1024, chat.max_new_tokens, "messages").max_new_tokens == 1000  # up to the context


def test_unseeded_requests_draw_their_own_seed_and_seeded_ones_keep_it():
    assert sampling_params(CompletionRequest(prompt="x", seed=7), 1, 64, 8, "prompt").seed == 7
    seeds = {sampling_params(CompletionRequest(prompt="x"), 1, 64, 8, "prompt").seed for _ in range(5)}
    assert len(seeds) == 5


def test_explicit_nulls_from_clients_mean_the_defaults():
    r = CompletionRequest.model_validate(
        {
            "prompt": "x",
            "stream": None,
            "echo": None,
            "temperature": None,
            "n": None,
            "top_p": None,
            "stop": None,
            "seed": None,
        }
    )
    assert (r.stream, r.echo, r.temperature, r.n, r.top_p, r.stop_strings, r.seed) == (
        False,
        False,
        1.0,
        1,
        1.0,
        (),
        None,
    )
