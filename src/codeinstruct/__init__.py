"""codeinstruct: turn a base code LLM into an instruction-following code assistant."""

__version__ = "0.1.0"
