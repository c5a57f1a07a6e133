"""Where a directory's code comes from: its project name and license, from the files beside it.

The corpus reader asks this room once per directory on its way down. Three kinds of evidence:

- package manifests (``pyproject.toml``, ``package.json``, ``Cargo.toml``) declare a project
  name and a license; the first manifest that says something wins;
- LICENSE/COPYING files (and LICENSE-MIT + LICENSE-APACHE pairs) are classified by their text
  when no manifest states a license;
- a site-packages directory holds one ``*.dist-info`` (or ``*.egg-info``) per installed
  distribution; its METADATA and RECORD map each top-level package onto its distribution.

Metadata is a best guess: a file that cannot be read or parsed says nothing, it never stops
the corpus.
"""

from __future__ import annotations

import collections
import csv
import email.parser
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import PurePosixPath

from codeinstruct.data.languages import language_of
from codeinstruct.data.licenses import (
    classifier_license,
    license_from_text,
    normalize_license,
)

__all__ = ["Declared", "SiteIndex", "declared_in", "is_install_metadata", "site_packages_index"]

_LICENSE_FILE = re.compile(r"(licen[cs]e|copying)(\.(txt|md|rst))?", re.IGNORECASE)
# LICENSE-MIT + LICENSE-APACHE is how Rust and others state a dual license.
_LICENSE_VARIANT_FILE = re.compile(r"(licen[cs]e|copying)[-_.]([a-z0-9]+)(\.(txt|md|rst))?", re.IGNORECASE)
_LICENSE_FILE_MAX = 65536


@dataclass(frozen=True)
class Declared:
    name: str | None = None
    license: str | None = None


# Path prefixes inside a site-packages directory (("google", "protobuf"), ("six.py",)) -> their distribution.
SiteIndex = dict[tuple[str, ...], Declared]


def is_install_metadata(name: str) -> bool:
    """Whether a directory name is an installed distribution's metadata (not code)."""
    return name.endswith((".dist-info", ".egg-info"))


def _read_text(path: str, limit: int | None = None) -> str | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(limit if limit is not None else -1)
    except OSError:
        return None
    return raw.decode("utf-8", errors="replace")


def _is_license_variant(name: str) -> bool:
    # license.py is a module about licenses, not the license of the code beside it.
    return bool(_LICENSE_VARIANT_FILE.fullmatch(name)) and language_of(name) in (
        None,
        "Text",
        "Markdown",
        "reStructuredText",
    )


def _license_of_files(dir_path: str, names: list[str]) -> str | None:
    """The license stated by LICENSE/COPYING files in a directory, or None."""
    main = sorted(n for n in names if _LICENSE_FILE.fullmatch(n))
    # COPYING holds the GPL that COPYING.LESSER builds on; the project's license is the LGPL.
    lesser = [n for n in names if n.lower().startswith("copying.lesser")]
    for name in lesser + main:
        spdx = license_from_text(_read_text(os.path.join(dir_path, name), _LICENSE_FILE_MAX) or "")
        if spdx:
            return spdx
    variants = sorted(n for n in names if _is_license_variant(n) and n not in main and n not in lesser)
    found = []
    for name in variants:
        spdx = license_from_text(_read_text(os.path.join(dir_path, name), _LICENSE_FILE_MAX) or "")
        if spdx and spdx not in found:
            found.append(spdx)
    return " OR ".join(found) or None


def _pyproject(dir_path: str) -> Declared:
    try:
        with open(os.path.join(dir_path, "pyproject.toml"), "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return Declared()  # metadata is a best guess; a broken file must not stop the corpus
    project = data.get("project") if isinstance(data.get("project"), dict) else {}
    poetry = data.get("tool", {}).get("poetry", {}) if isinstance(data.get("tool"), dict) else {}
    name = project.get("name") or (poetry.get("name") if isinstance(poetry, dict) else None)
    license = project.get("license")
    spdx = None
    if isinstance(project.get("license-expression"), str):
        spdx = " ".join(project["license-expression"].split()) or None
    elif isinstance(license, str):
        spdx = normalize_license(license)
    elif isinstance(license, dict):
        if isinstance(license.get("text"), str):
            spdx = normalize_license(license["text"])
        elif isinstance(license.get("file"), str):
            spdx = license_from_text(_read_text(os.path.join(dir_path, license["file"]), _LICENSE_FILE_MAX) or "")
    if spdx is None and isinstance(poetry, dict) and isinstance(poetry.get("license"), str):
        spdx = normalize_license(poetry["license"])
    if spdx is None and isinstance(project.get("classifiers"), list):
        spdx = classifier_license(c for c in project["classifiers"] if isinstance(c, str))
    return Declared(name if isinstance(name, str) and name else None, spdx)


def _package_json(dir_path: str) -> Declared:
    try:
        with open(os.path.join(dir_path, "package.json"), "rb") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return Declared()
    if not isinstance(data, dict):
        return Declared()
    license = data.get("license")
    if isinstance(license, dict):  # the old {"type": "MIT", "url": ...} form
        license = license.get("type")
    if license is None and isinstance(data.get("licenses"), list):
        types = [lic.get("type") for lic in data["licenses"] if isinstance(lic, dict)]
        license = " OR ".join(t for t in types if isinstance(t, str)) or None
    name = data.get("name")
    return Declared(
        name if isinstance(name, str) and name else None,
        normalize_license(license) if isinstance(license, str) else None,
    )


def _cargo_toml(dir_path: str) -> Declared:
    try:
        with open(os.path.join(dir_path, "Cargo.toml"), "rb") as f:
            package = tomllib.load(f).get("package", {})
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return Declared()
    if not isinstance(package, dict):
        return Declared()
    name, license = package.get("name"), package.get("license")
    spdx = normalize_license(license) if isinstance(license, str) else None
    if spdx is None and isinstance(package.get("license-file"), str):
        spdx = license_from_text(_read_text(os.path.join(dir_path, package["license-file"]), _LICENSE_FILE_MAX) or "")
    return Declared(name if isinstance(name, str) and name else None, spdx)


_MANIFESTS = (("pyproject.toml", _pyproject), ("package.json", _package_json), ("Cargo.toml", _cargo_toml))


def _manifests(dir_path: str, names: set[str]) -> Declared:
    """Project name and license declared by the manifests in one directory (first that says wins)."""
    name = license = None
    for manifest, read in _MANIFESTS:
        if manifest in names:
            found = read(dir_path)
            name, license = name or found.name, license or found.license
    return Declared(name, license)


def declared_in(dir_path: str, names: list[str]) -> Declared:
    """The project name and license that a directory states: by a manifest, else by LICENSE files.

    `names` are the entries of the directory, which the caller has already listed.
    """
    name_set = set(names)
    declared = _manifests(dir_path, name_set) if not name_set.isdisjoint(m for m, _ in _MANIFESTS) else Declared()
    if declared.license is None and any(_LICENSE_FILE.fullmatch(n) or _is_license_variant(n) for n in names):
        return Declared(declared.name, _license_of_files(dir_path, names))
    return declared


def _dist_info(dist_dir: str) -> tuple[Declared, list[tuple[str, ...]]]:
    """An install's name and license, and the paths (as parts) of what it installed.

    Wheels leave a .dist-info with METADATA and RECORD; setuptools' egg-info (also what a
    src layout holds after an editable install) has the same fields in PKG-INFO.
    """
    text = _read_text(os.path.join(dist_dir, "METADATA")) or _read_text(os.path.join(dist_dir, "PKG-INFO")) or ""
    headers = email.parser.HeaderParser().parsestr(text, headersonly=True)
    # License-Expression is SPDX by definition (PEP 639): trust it as written.
    license = " ".join((headers.get("License-Expression") or "").split()) or normalize_license(headers.get("License"))
    if license is None:
        license = classifier_license(headers.get_all("Classifier") or [])
    if license is None:
        # Wheels built with License-File ship the text; classify it as a last resort.
        for name in headers.get_all("License-File") or []:
            for candidate in (os.path.join(dist_dir, "licenses", name), os.path.join(dist_dir, name)):
                license = license_from_text(_read_text(candidate, _LICENSE_FILE_MAX) or "")
                if license:
                    break
            if license:
                break
    paths: list[tuple[str, ...]] = []
    record = _read_text(os.path.join(dist_dir, "RECORD"))
    if record:
        for row in csv.reader(record.splitlines()):
            if not row:
                continue
            parts = tuple(PurePosixPath(row[0]).parts)
            # Scripts and data land outside site-packages ("../../bin"); the dist-info is metadata.
            outside = not parts or parts[0] in ("..", "/", "__pycache__")
            if outside or parts[0].endswith((".dist-info", ".egg-info", ".data")):
                continue
            paths.append(parts)
    else:
        top_level = _read_text(os.path.join(dist_dir, "top_level.txt")) or ""
        paths = [tuple(PurePosixPath(line.strip()).parts) for line in top_level.splitlines() if line.strip()]
    return Declared(headers.get("Name"), license), paths


def _claim(dists: list[tuple[Declared, list[tuple[str, ...]]]], depth: int = 1) -> SiteIndex:
    """Map path prefixes to the one distribution that owns them.

    Namespace packages (google/, nvidia/) are shared by several distributions, so a shared
    prefix is split one level deeper until each part has a single owner.
    """
    owners: dict[tuple[str, ...], set[int]] = collections.defaultdict(set)
    for index, (_, paths) in enumerate(dists):
        for parts in paths:
            if len(parts) >= depth:
                owners[parts[:depth]].add(index)
    claimed: SiteIndex = {}
    for prefix, indices in owners.items():
        if len(indices) == 1:
            claimed[prefix] = dists[next(iter(indices))][0]
        elif depth < 4:
            shared = [(dists[i][0], [p for p in dists[i][1] if p[:depth] == prefix]) for i in sorted(indices)]
            claimed.update(_claim(shared, depth + 1))
    return claimed


def site_packages_index(dir_path: str, names: list[str]) -> SiteIndex | None:
    """Which distribution owns which paths below a directory that holds installed distributions'
    metadata (a site-packages), or None when it holds none."""
    dist_infos = [n for n in names if is_install_metadata(n) and os.path.isdir(os.path.join(dir_path, n))]
    if not dist_infos:
        return None
    return _claim([_dist_info(os.path.join(dir_path, name)) for name in sorted(dist_infos)])
