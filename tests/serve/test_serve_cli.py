"""`codeinstruct serve` as a user starts it: clear one-line errors for what cannot work."""

import socket


def _error(code, out, err, needle):
    assert code == 1, out + err
    assert err.startswith("error: ") and needle in err.replace("\n", "")
    assert "Traceback" not in out + err


def test_serve_needs_exactly_one_of_model_and_upstream(cli, model_dir):
    _error(*cli("serve"), "give --model DIR to serve a model here, or --upstream URL")
    _error(*cli("serve", "--model", model_dir, "--upstream", "http://127.0.0.1:9"), "not both")
    _error(*cli("serve", "--upstream", "ftp://example"), "expected an http:// or https:// URL")


def test_serve_names_a_missing_model_or_index(cli, model_dir, tmp_path):
    _error(*cli("serve", "--model", tmp_path / "nope"), "not a model directory")
    _error(*cli("serve", "--model", model_dir, "--attribution-index", tmp_path / "nope"), "no attribution index here")


def test_an_address_in_use_is_a_one_line_error(cli, model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _error(*cli("serve", "--model", model_dir, "--port", port), f"cannot listen on 127.0.0.1:{port}")
