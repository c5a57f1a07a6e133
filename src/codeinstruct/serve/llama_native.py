"""What llama.cpp's native routes (/completion, /infill) add to a generation, for both backends: the
code-completion limits editors send (`n_indent`, `t_max_predict_ms`), applied to the text as it comes,
and the final object's timing fields.

The limits follow llama.cpp's server: a new line whose indentation (spaces and tabs) is less than
`n_indent` ends the text where its indentation ends, an empty line included (llama.cpp keeps the line's
indentation; so does this); once a line is complete and `t_max_predict_ms` have passed since the first
token, the text ends where it is. Either ends it as a length limit would (`stop_type` "limit").
"""

from __future__ import annotations


class CompletionLimits:
    """Feed the text of one generation piece by piece; each call says what of the piece to show and
    whether the text ends there (then the generation is to be cancelled)."""

    def __init__(self, n_indent: int = 0, t_max_predict_ms: int = 0, hidden: bool = False):
        self.n_indent = n_indent
        self.t_max = t_max_predict_ms / 1000
        self.hidden = hidden  # n_predict 0: the prompt is evaluated, nothing is shown
        self.text = ""
        self.first: float | None = None
        self._scan = 0  # new lines before this index have been judged
        self.cut = False

    def feed(self, piece: str, now: float) -> tuple[str, bool]:
        if self.cut:
            return "", True
        if self.first is None:
            self.first = now
        start = len(self.text)
        self.text += piece
        end = len(self.text)
        if self.n_indent:
            end = self._indent_cut()
        if end < len(self.text):
            self.text, self.cut = self.text[:end], True
        elif self.t_max and "\n" in self.text and now - self.first > self.t_max:
            self.cut = True
        return ("" if self.hidden else self.text[start:]), self.cut

    def _indent_cut(self) -> int:
        """Where the first new line indented less than `n_indent` ends its indentation, or the text's end."""
        text = self.text
        while (newline := text.find("\n", self._scan)) >= 0:
            j = newline + 1
            while j < len(text) and text[j] in " \t":
                j += 1
            if j == len(text):
                return len(text)  # the line has no character yet: judged when it has
            if j - newline - 1 < self.n_indent:
                return j
            self._scan = newline + 1
        return len(text)


def timings(prompt_n: int, cache_n: int, prompt_ms: float, predicted_n: int, predicted_ms: float) -> dict:
    """llama.cpp's `timings` object: `prompt_n` prompt tokens computed, `cache_n` taken from the cache."""

    def per_second(n: int, ms: float) -> float | None:
        return n / (ms / 1000) if ms > 0 else None

    return {
        "cache_n": cache_n,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else None,
        "prompt_per_second": per_second(prompt_n, prompt_ms),
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else None,
        "predicted_per_second": per_second(predicted_n, predicted_ms),
    }
