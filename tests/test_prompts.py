from codeinstruct.prompts import extract_response, format_prompt, format_target


def test_with_input_template_is_alpacas_exactly():
    assert format_prompt("Sort the list.", "[3, 1, 2]") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSort the list.\n\n### Input:\n[3, 1, 2]\n\n### Response:"
    )


def test_no_input_template_is_alpacas_exactly():
    assert format_prompt("Say hi in C.") == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSay hi in C.\n\n### Response:"
    )


def test_whitespace_only_input_uses_the_no_input_template():
    assert format_prompt("Say hi.", "  \n\t") == format_prompt("Say hi.")
    assert "### Input:" not in format_prompt("Say hi.", " \n")


def test_prompt_has_no_trailing_newline_and_target_starts_with_the_separator():
    assert format_prompt("x").endswith("### Response:")
    assert format_target("print(1)") == "\nprint(1)"


def test_extract_response_drops_separator_and_cuts_at_a_new_turn():
    assert extract_response("\nprint(1)") == "print(1)"
    assert extract_response("\nprint(1)\n\n### Instruction:\nmore") == "print(1)"
    # Only the one separator newline goes; indentation of the answer stays.
    assert extract_response("\n    x = 1") == "    x = 1"
