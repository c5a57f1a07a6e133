"""Attribution: find where generated code came from, with repository, path, license and lines.

``codeinstruct attribute index`` builds an index over a corpus; ``AttributionIndex.open(path)
.check(code)`` (and ``codeinstruct attribute check``) reports every span of ``min_tokens`` or
more tokens that the code shares with it, verbatim or with names and literals consistently
renamed. See normalize (token views), fingerprint (k-grams, winnowing, Bloom filter), align
(exact verification), index (the files on disk) and report (what a check returns).
"""

from codeinstruct.attribution.index import (
    DEFAULT_MIN_TOKENS,
    AttributionIndex,
    IndexSummary,
    build_index,
)
from codeinstruct.attribution.report import AttributionReport, Match

__all__ = ["DEFAULT_MIN_TOKENS", "AttributionIndex", "AttributionReport", "IndexSummary", "Match", "build_index"]
