"""Which language a source file is written in, by its name or extension.

One table maps languages to their file extensions; the corpus reader uses it to label each
document and, by default, to read only source code: data and prose formats are known (for
``--include``) but not read unless asked for.
"""

from __future__ import annotations

__all__ = ["DATA_AND_PROSE", "DEFAULT_EXTENSIONS", "LANGUAGES", "LANGUAGE_BY_NAME", "extension_of", "language_of"]

LANGUAGES: dict[str, tuple[str, ...]] = {
    "Python": ("py", "pyi", "pyw"),
    "Cython": ("pyx", "pxd", "pxi"),
    "C": ("c", "h"),
    "C++": ("cc", "cpp", "cxx", "c++", "hh", "hpp", "hxx", "h++", "ipp", "tpp", "inl"),
    "CUDA": ("cu", "cuh"),
    "C#": ("cs",),
    "Objective-C": ("m",),
    "Objective-C++": ("mm",),
    "Java": ("java",),
    "Kotlin": ("kt", "kts"),
    "Scala": ("scala",),
    "Groovy": ("groovy", "gradle"),
    "JavaScript": ("js", "mjs", "cjs", "jsx"),
    "TypeScript": ("ts", "tsx", "mts", "cts"),
    "Vue": ("vue",),
    "Svelte": ("svelte",),
    "Go": ("go",),
    "Rust": ("rs",),
    "Zig": ("zig",),
    "Nim": ("nim",),
    "Swift": ("swift",),
    "Dart": ("dart",),
    "Ruby": ("rb",),
    "PHP": ("php",),
    "Perl": ("pl", "pm"),
    "Lua": ("lua",),
    "R": ("r",),
    "Julia": ("jl",),
    "Haskell": ("hs",),
    "OCaml": ("ml", "mli"),
    "F#": ("fs", "fsx"),
    "Erlang": ("erl", "hrl"),
    "Elixir": ("ex", "exs"),
    "Clojure": ("clj", "cljs", "cljc"),
    "Fortran": ("f", "f77", "f90", "f95", "f03", "f08", "for"),
    "Assembly": ("s", "asm"),
    "Verilog": ("v",),
    "SystemVerilog": ("sv", "svh"),
    "VHDL": ("vhd", "vhdl"),
    "Shell": ("sh", "bash", "zsh"),
    "PowerShell": ("ps1", "psm1"),
    "Batchfile": ("bat", "cmd"),
    "SQL": ("sql",),
    "HTML": ("html", "htm"),
    "CSS": ("css",),
    "SCSS": ("scss",),
    "Less": ("less",),
    "Makefile": ("mk",),
    "CMake": ("cmake",),
    "Protocol Buffer": ("proto",),
    "Tcl": ("tcl",),
    "Visual Basic": ("vb",),
    "Pascal": ("pas",),
    # Data and prose: known when asked for with --include, not read by default.
    "JSON": ("json",),
    "YAML": ("yaml", "yml"),
    "TOML": ("toml",),
    "XML": ("xml",),
    "CSV": ("csv",),
    "INI": ("ini", "cfg"),
    "Markdown": ("md", "markdown"),
    "reStructuredText": ("rst",),
    "Text": ("txt",),
}

_LANGUAGE_BY_EXTENSION = {ext: lang for lang, exts in LANGUAGES.items() for ext in exts}
# Files whose whole name, not an extension, says the language.
LANGUAGE_BY_NAME = {
    "Makefile": "Makefile",
    "GNUmakefile": "Makefile",
    "CMakeLists.txt": "CMake",
    "Dockerfile": "Dockerfile",
}
# Long lines are normal in data and prose (one paragraph per line), so the minified
# filter would throw away good files of these kinds.
DATA_AND_PROSE = frozenset({"JSON", "YAML", "TOML", "XML", "CSV", "INI", "Markdown", "reStructuredText", "Text"})
# What a directory source reads when no --include is given: source code, not data or prose.
DEFAULT_EXTENSIONS = frozenset(ext for ext, lang in _LANGUAGE_BY_EXTENSION.items() if lang not in DATA_AND_PROSE)


def extension_of(name: str) -> str:
    """The lowercase extension of a file name without its dot, or "" when it has none."""
    stem, dot, ext = name.rpartition(".")
    # ".bashrc" is a name, not an extension.
    return ext.lower() if dot and stem else ""


def language_of(path: str) -> str | None:
    """The language of a file by its name or extension, or None."""
    name = path.rpartition("/")[2]
    return LANGUAGE_BY_NAME.get(name) or _LANGUAGE_BY_EXTENSION.get(extension_of(name))
