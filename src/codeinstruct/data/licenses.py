"""License names and texts to SPDX ids.

Two ways in: a declared name from package metadata ("MIT License", "Apache 2.0", a trove
classifier, an SPDX expression) is normalised by `normalize_license`; the text of a LICENSE
file is classified by `license_from_text`. Where neither is sure, the answer is None rather
than a guess, so the corpus's license breakdown lists ids, not prose.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

__all__ = ["classifier_license", "license_from_text", "normalize_license"]

# Canonical spelling of the SPDX ids people write in metadata, by lowercase id.
_SPDX_IDS = (
    "0BSD", "AFL-3.0", "AGPL-3.0", "AGPL-3.0-only", "AGPL-3.0-or-later", "Apache-1.1", "Apache-2.0",
    "Artistic-2.0", "BSD-1-Clause", "BSD-2-Clause", "BSD-3-Clause", "BSD-3-Clause-Clear", "BSD-4-Clause",
    "BSL-1.0", "CC0-1.0", "CC-BY-4.0", "CC-BY-SA-4.0", "CDDL-1.0", "ECL-2.0", "EPL-1.0", "EPL-2.0",
    "EUPL-1.2", "GPL-2.0", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0", "GPL-3.0-only",
    "GPL-3.0-or-later", "HPND", "ISC", "LGPL-2.0", "LGPL-2.0-or-later", "LGPL-2.1", "LGPL-2.1-only",
    "LGPL-2.1-or-later", "LGPL-3.0", "LGPL-3.0-only", "LGPL-3.0-or-later", "MIT", "MIT-0", "MIT-CMU",
    "MPL-1.1", "MPL-2.0", "NCSA", "OFL-1.1", "PSF-2.0", "Python-2.0", "Unlicense", "UPL-1.0", "WTFPL",
    "X11", "Zlib", "ZPL-2.1",
)  # fmt: skip
_SPDX_BY_LOWER = {spdx.lower(): spdx for spdx in _SPDX_IDS}

# Free-text names found in License: fields, pyproject tables and trove classifiers.
_LICENSE_ALIASES = {
    "mit license": "MIT",
    "the mit license": "MIT",
    "mit no attribution license (mit-0)": "MIT-0",
    "expat": "MIT",
    "apache": "Apache-2.0",
    "apache 2": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache-2": "Apache-2.0",
    "apache license": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0",
    "apache license version 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "apache software license 2.0": "Apache-2.0",
    "apache software license, version 2.0": "Apache-2.0",
    "apache 2.0 license": "Apache-2.0",
    "asl 2.0": "Apache-2.0",
    "new bsd": "BSD-3-Clause",
    "new bsd license": "BSD-3-Clause",
    "modified bsd": "BSD-3-Clause",
    "modified bsd license": "BSD-3-Clause",
    "3-clause bsd": "BSD-3-Clause",
    "3-clause bsd license": "BSD-3-Clause",
    "bsd 3-clause": "BSD-3-Clause",
    "bsd 3-clause license": "BSD-3-Clause",
    "bsd-3": "BSD-3-Clause",
    "simplified bsd": "BSD-2-Clause",
    "2-clause bsd": "BSD-2-Clause",
    "bsd 2-clause": "BSD-2-Clause",
    "bsd 2-clause license": "BSD-2-Clause",
    "freebsd": "BSD-2-Clause",
    "gplv2": "GPL-2.0",
    "gpl v2": "GPL-2.0",
    "gplv2+": "GPL-2.0-or-later",
    "gplv3": "GPL-3.0",
    "gpl v3": "GPL-3.0",
    "gplv3+": "GPL-3.0-or-later",
    "lgplv2.1": "LGPL-2.1",
    "lgplv3": "LGPL-3.0",
    "lgplv3+": "LGPL-3.0-or-later",
    "mpl 2.0": "MPL-2.0",
    "mpl-2": "MPL-2.0",
    "mozilla public license 2.0": "MPL-2.0",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "isc license": "ISC",
    "isc license (iscl)": "ISC",
    "the unlicense": "Unlicense",
    "the unlicense (unlicense)": "Unlicense",
    "psf": "PSF-2.0",
    "psf license": "PSF-2.0",
    "psfl": "PSF-2.0",
    "python software foundation license": "PSF-2.0",
    "gnu general public license v2 (gplv2)": "GPL-2.0",
    "gnu general public license v2 or later (gplv2+)": "GPL-2.0-or-later",
    "gnu general public license v3 (gplv3)": "GPL-3.0",
    "gnu general public license v3 or later (gplv3+)": "GPL-3.0-or-later",
    "gnu lesser general public license v2 or later (lgplv2+)": "LGPL-2.0-or-later",
    "gnu lesser general public license v3 (lgplv3)": "LGPL-3.0",
    "gnu lesser general public license v3 or later (lgplv3+)": "LGPL-3.0-or-later",
    "gnu affero general public license v3": "AGPL-3.0",
    "boost software license 1.0 (bsl-1.0)": "BSL-1.0",
    "eclipse public license 2.0 (epl-2.0)": "EPL-2.0",
    "historical permission notice and disclaimer (hpnd)": "HPND",
    "universal permissive license (upl)": "UPL-1.0",
    "zope public license": "ZPL-2.1",
    "cc0 1.0 universal (cc0 1.0) public domain dedication": "CC0-1.0",
}
_SPDX_TOKEN = r"[A-Za-z0-9][A-Za-z0-9.+-]*"
# An SPDX expression as modern metadata writes it ("MIT OR Apache-2.0").
_SPDX_EXPRESSION = re.compile(rf"\(*{_SPDX_TOKEN}\)*(\s+(AND|OR|WITH)\s+\(*{_SPDX_TOKEN}\)*)*")
# An id we do not list but which has SPDX's shape: a name and a version ("BlueOak-1.0.0").
_SPDX_LIKE_ID = re.compile(r"[A-Za-z][A-Za-z0-9.]*(-[A-Za-z0-9.]+)*-\d[\d.]*(-only|-or-later|\+)?")
# Names that look like ids but do not say which license ("BSD": 2, 3 or 4 clauses?).
_AMBIGUOUS = frozenset(
    {"bsd", "bsd license", "gpl", "lgpl", "gnu gpl", "other", "unknown", "dual license", "proprietary", "public domain"}
)


def _spdx_id(token: str) -> str | None:
    """The canonical spelling of one SPDX id, or None if the token is not shaped like one."""
    if token.lower() in _SPDX_BY_LOWER:
        return _SPDX_BY_LOWER[token.lower()]
    if token.startswith("LicenseRef-") or _SPDX_LIKE_ID.fullmatch(token) or token.lower().endswith("-exception"):
        return token
    return None


def _spdx_expression(text: str) -> str | None:
    """``text`` with canonical id spellings if it is an SPDX expression, else None."""
    if not _SPDX_EXPRESSION.fullmatch(text):
        return None
    out = []
    for token in re.split(r"(\s+|[()])", text):
        if token in ("AND", "OR", "WITH", "(", ")", "") or token.isspace():
            out.append(" " if token.isspace() else token)
            continue
        spdx = _spdx_id(token)
        if spdx is None:
            return None
        out.append(spdx)
    return "".join(out)


def normalize_license(name: str | None) -> str | None:
    """An SPDX id or expression for a declared license name ("MIT License", "Apache 2.0"), or None.

    Names that cannot be mapped are None rather than passed through, so the license
    breakdown lists ids, not prose; a License: field holding the whole license text is
    classified by its text.
    """
    if not name or not name.strip():
        return None
    text = " ".join(name.split())
    if len(text) > 200 or "\n" in name.strip():
        return license_from_text(name)
    lower = text.lower()
    for prefix in ("license :: osi approved :: ", "license :: "):
        lower = lower.removeprefix(prefix)
    if lower in _AMBIGUOUS:
        return None
    if lower in _LICENSE_ALIASES:
        return _LICENSE_ALIASES[lower]
    if lower.endswith(" license") and lower.removesuffix(" license") in _SPDX_BY_LOWER:
        return _SPDX_BY_LOWER[lower.removesuffix(" license")]
    if "/" in text:  # Cargo's old "MIT/Apache-2.0" means either
        ids = [_spdx_id(part.strip()) for part in text.split("/")]
        return " OR ".join(ids) if all(ids) else None  # type: ignore[arg-type]
    return _spdx_expression(text)


def _version_after(text: str, start: int, window: int = 250) -> str | None:
    m = re.search(r"version (\d(?:\.\d)?)", text[start : start + window])
    return m.group(1) if m else None


def _gpl_family(text: str, pos: int, name: str) -> str | None:
    version = _version_after(text, pos)
    if name == "LGPL":
        lgpl = {"2": "LGPL-2.0", "2.0": "LGPL-2.0", "2.1": "LGPL-2.1", "3": "LGPL-3.0", "3.0": "LGPL-3.0"}
        return lgpl.get(version or "")
    if name == "AGPL":
        return "AGPL-3.0" if version in ("3", "3.0") else None
    return {"2": "GPL-2.0", "2.0": "GPL-2.0", "3": "GPL-3.0", "3.0": "GPL-3.0"}.get(version or "")


def _bsd_family(text: str, pos: int) -> str:
    conditions = text[pos : pos + 2000]
    if "all advertising materials" in conditions:
        return "BSD-4-Clause"
    if any(
        clause in conditions
        for clause in ("neither the name", "names of its contributors", "name of the copyright holder")
    ):
        return "BSD-3-Clause"
    return "BSD-2-Clause"


# Each license is recognised by a phrase from its text; a file holding several (a project's
# license followed by those of vendored code) is classified by the phrase found first, and
# only near the top: a project's own license comes first, so a phrase found deep into
# the file (matplotlib's bundled MIT notices after its own license) says nothing about it.
_LICENSE_PHRASE_WITHIN = 4000
_LICENSE_PHRASES: tuple[tuple[str, Callable[[str, int], str | None]], ...] = (
    (
        "permission is hereby granted, free of charge, to any person obtaining a copy",
        # NCSA reuses MIT's grant, but "to deal with" the software rather than "in" it.
        lambda t, p: "NCSA" if "to deal with the software" in t[p : p + 300] else "MIT",
    ),
    ("apache license", lambda t, p: "Apache-2.0" if _version_after(t, p, 80) in ("2", "2.0") else None),
    ("redistribution and use in source and binary forms", _bsd_family),
    ("gnu lesser general public license", lambda t, p: _gpl_family(t, p, "LGPL")),
    ("gnu library general public license", lambda t, p: _gpl_family(t, p, "LGPL")),
    ("gnu affero general public license", lambda t, p: _gpl_family(t, p, "AGPL")),
    ("gnu general public license", lambda t, p: _gpl_family(t, p, "GPL")),
    (
        "mozilla public license",
        lambda t, p: (
            "MPL-2.0"
            if _version_after(t, p, 80) in ("2", "2.0") or t.startswith("mozilla public license 2.0", p)
            else None
        ),
    ),
    (
        "with or without fee is hereby granted",
        # ISC keeps the notice requirement; 0BSD is the same grant without it.
        lambda t, p: "ISC" if "provided that the above copyright notice" in t[p : p + 200] else "0BSD",
    ),
    ("this is free and unencumbered software released into the public domain", lambda t, p: "Unlicense"),
    ("python software foundation license", lambda t, p: "PSF-2.0"),
)


def license_from_text(text: str) -> str | None:
    """Classify a license file's text to an SPDX id, or None when it is none of the common ones."""
    # Comment markers and line breaks would split the phrases we look for.
    flat = " ".join(re.sub(r"(?m)^[ \t]*(#|//|\*|;|--)+", " ", text[:65536]).lower().split())
    best: tuple[int, str] | None = None
    for phrase, classify in _LICENSE_PHRASES:
        pos = flat.find(phrase)
        while -1 < pos < _LICENSE_PHRASE_WITHIN and (best is None or pos < best[0]):
            spdx = classify(flat, pos)
            if spdx is not None:
                best = (pos, spdx)
                break
            # A mention without a version (e.g. "unlike the GPL ...") is no verdict; look further.
            pos = flat.find(phrase, pos + 1)
    return best[1] if best else None


def classifier_license(classifiers: Iterable[str]) -> str | None:
    """The SPDX ids named by "License :: ..." trove classifiers, joined with OR, or None."""
    found: list[str] = []
    for classifier in classifiers:
        if classifier.startswith("License ::"):
            spdx = normalize_license(classifier)
            if spdx and spdx not in found:
                found.append(spdx)
    return " OR ".join(found) or None
