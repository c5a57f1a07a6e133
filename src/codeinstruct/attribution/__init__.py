"""Attribution: find where generated code came from, with repository, path, license and lines.

``build_index`` (``codeinstruct attribute index``) builds an index over a corpus;
``AttributionIndex.open(path).check(code)`` (and ``codeinstruct attribute check``) reports every
span of ``min_tokens`` or more tokens that the code shares with it, verbatim or with names
consistently renamed (its literals kept over min_tokens of it at least). The rooms: normalize
(token views), fingerprint (k-grams, winnowing, Bloom filter), align (exact verification),
format (the files on disk), build (writing an index: its shards, as Ray tasks when several),
index (opening and querying one, merging its shards' answers), report (what a check returns)
and decontaminate (benchmark problems found in the corpus).
"""

from codeinstruct.attribution.build import DEFAULT_MIN_TOKENS, IndexSummary, build_index
from codeinstruct.attribution.index import AttributionIndex
from codeinstruct.attribution.report import AttributionReport, Match

__all__ = ["DEFAULT_MIN_TOKENS", "AttributionIndex", "AttributionReport", "IndexSummary", "Match", "build_index"]
