"""Check the numbers that learning_guide.md quotes from a notebook against the notebook's saved outputs.

The rule: every number in the guide appears in a notebook output or a test. This script finds the numbers
the guide quotes from each notebook and looks for them in the outputs committed with that notebook.

    .venv/bin/python tools/check_guide.py                 # exit status 1 if a quoted number is missing
    .venv/bin/python tools/check_guide.py --notebook 05   # only the numbers quoted from notebook 05
    .venv/bin/python tools/check_guide.py --list          # every number checked, and where it was found

Each missing number is one line, `learning_guide.md:LINE: 3.056 (cites notebook 05) not in its outputs`.
tests/test_check_guide.py runs the check on the repository. It reads JSON and text only: about 0.1 s.

The rules
---------
Blocks. The guide is cut into blocks: paragraphs, list items, tables and indented code blocks, separated
by blank lines or list markers. Headings and fenced code blocks (code and formulas) are not checked.

Citations. A block cites notebook NN when it links to notebooks/NN_*.ipynb or says "notebook NN" or
"notebooks NN". A block that cites no notebook cites its chapter's ("## N. Title": notebook 0N): the guide
often introduces a table with "(notebook 04):" in the paragraph before it, or says "the notebook".
Blocks before chapter 0 or after the last chapter cite nothing unless they say so.

Numbers. Checked: decimals (5.290, 0.0083), numbers with thousands separators (1,800), other integers
from 100 up (4096), percentages (85.2%), scientific notation with a decimal point (3.6e-4, 9.97e-10) and
millions (0.98M). Not checked:
  - integers below 100 without a separator (6 steps, chapter 4, 46%) and years (1900 to 2100);
  - numbers in inline code, $...$ or $$...$$ math, link targets and HTML comments;
  - parts of words or versions (float32, H100, AVX512, 3.11.7) and bare powers of ten (1e-3);
  - equation-like numbers: next to ^, / or * (2^24, 1/200, 0.02 / sqrt(...)) or after ln, log, exp or
    sqrt (ln 511).

Matching. A quote with k decimals (k decimals of the mantissa for 3.6e-4) is found when a number of the
notebook rounds to it at k decimals: 3.06 matches 3.056, 3.05 does not; 1,800 matches 1800 and 1,800;
0.98M matches 0.98M and 980,123. A decimal quote looks only at the notebook's decimals: 7.00 is not found
in "step 7". The notebook's outputs come first (stream text, text/plain, text/markdown and text/html; not
images or tracebacks), then its markdown cells (the notebook states the number), then its code cells (a
setting such as 20_000 windows). --list counts the last two apart from the outputs. A quote of one or two
digits (t = 0.7) is a weak check: some number of the notebook often rounds to it by chance.

Exceptions. A number that deliberately comes from elsewhere (a difference of two quoted numbers, a math
constant) goes into ALLOWED below, keyed by notebook and the number as the guide writes it, with the
reason. A dict here keeps the guide free of markup that a reader of the raw markdown would trip over;
an entry that no longer matches a quote is reported, so the list cannot go stale unnoticed.
"""
from __future__ import annotations

import argparse
import bisect
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "learning_guide.md"
NOTEBOOKS = ROOT / "notebooks"
SOURCES = ("outputs", "markdown", "code")  # where a number may be found, in order of preference

# (notebook, number as the guide writes it) -> why it is not in that notebook
ALLOWED: dict[tuple[str, str], str] = {
    ("01", "268"): "the id of the 13th merge, 256 + 12; the notebook prints the merges, not their ids",
    ("01", "0.53"): "2.53 - 2.00, a difference of two entries of the compression table",
    ("01", "0.45"): "2.98 - 2.53, as above",
    ("01", "0.42"): "3.40 - 2.98, as above",
    ("02", "100,000"): "the settings of tests/test_diffusion.py::test_q_step_composes_to_q_sample",
    ("02", "0.8"): "as above",
    ("05", "0.9999"): "the gpu preset's ema_decay (mdlm_course/config.py)",
    ("07", "2.6"): "a version number: classic pygame 2.6 (requirements-core.txt)",
    ("08", "0.003"): "2.1082 - 2.1049, a difference of two printed bits/byte figures (the output-shift cell)",
}

CHAPTER = re.compile(r"## (\d+)\. ")
LIST_ITEM = re.compile(r" {0,3}(?:[-*+]|\d+\.) ")
FENCE = re.compile(r" {0,3}```")
CITATION = re.compile(r"notebooks/(\d\d)_[\w.-]*\.ipynb|\bnotebooks? (\d\d)\b", re.IGNORECASE)
NOT_PROSE = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$|`[^`]*`|\]\([^)]*\)|<!--.*?-->", re.DOTALL)
QUOTED_NUMBER = re.compile(r"""
    (?<![\w.^/*]) (?<![\^/*]\ )          # not inside a word, a version or an expression
    (?P<number> \d{1,3}(?:,\d{3})+(?:\.\d+)? | \d+(?:\.\d+)? )
    (?P<exponent> e[+-]?\d+ )?
    (?P<unit> % | M\b )?
    (?! \.\d | [\w^/*] | \ [\^/*] )
""", re.VERBOSE)
FUNCTION_BEFORE = re.compile(r"\b(?:ln|log|exp|sqrt)\s*\(?\s*$")
DECIMAL = re.compile(r"[.eE]")
ANY_NUMBER = re.compile(r"\d{1,3}(?:[,_]\d{3})+(?:\.\d+)?(?:e[+-]?\d+)?|\d+(?:\.\d+)?(?:e[+-]?\d+)?", re.IGNORECASE)


class Target(NamedTuple):
    value: float
    half_width: float                       # of the rounding interval: 0.0005 for 5.290
    decimal: bool                           # look only at the notebook's decimals (7.00 is not "step 7")


class Quote(NamedTuple):
    line: int
    text: str                               # as the guide writes it: "1,800", "85.2%", "3.6e-4"
    notebooks: tuple[str, ...]              # "05", ...
    explicit: bool                          # the block names the notebook (else: its chapter's)
    targets: tuple[Target, ...]             # the quote is found if one of them is


class Result(NamedTuple):
    quote: Quote
    found: str | None                       # one of SOURCES, "allowed", or None


def blocks(text: str) -> list[tuple[int | None, int, str]]:
    """(chapter, first line number, text) of each paragraph, list item, table and indented code block."""
    found, lines, first, chapter, in_fence, in_table = [], [], 0, None, False, False

    def flush():
        if lines:
            found.append((chapter, first, "\n".join(lines)))
        lines.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            flush()
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if line.startswith("#") or not line.strip():
            flush()
            if line.startswith("## "):
                heading = CHAPTER.match(line)
                chapter = int(heading[1]) if heading else None
            continue
        is_row = line.lstrip().startswith("|")
        if LIST_ITEM.match(line) or is_row != in_table:
            flush()
        if not lines:
            first, in_table = number, is_row
        lines.append(line)
    flush()
    return found


def cited_notebooks(block: str) -> list[str]:
    """The notebooks a block names, in order: "notebook 05", [...](notebooks/05_training.ipynb)."""
    cited = [a or b for a, b in CITATION.findall(block)]
    return sorted(set(cited), key=cited.index)


def prose_only(block: str) -> str:
    """The block with its code, math, link targets and comments blanked out (same length, same lines)."""
    return NOT_PROSE.sub(lambda m: re.sub(r"[^\n]", " ", m[0]), block)


def targets(match: re.Match, before: str) -> tuple[Target, ...] | None:
    """What a quoted number may match in a notebook, or None if the rules skip it."""
    number, exponent, unit = match["number"], match["exponent"], match["unit"]
    digits, _, decimals = number.replace(",", "").partition(".")
    if FUNCTION_BEFORE.search(before) or (exponent and not decimals):
        return None
    if not decimals and not exponent and "," not in number:
        if int(digits) < 100 or 1900 <= int(digits) <= 2100:
            return None
    scale = 10.0 ** int(exponent[1:]) if exponent else 1.0
    value, half_width = float(digits + "." + (decimals or "0")) * scale, 0.5 * 10.0 ** -len(decimals) * scale
    exact = Target(value, half_width, decimal=bool(decimals))
    if unit == "M":                         # 0.98M: also 980,123 (an integer is fine then)
        return exact, Target(value * 1e6, half_width * 1e6, decimal=False)
    return (exact,)


def quotes(guide_text: str) -> list[Quote]:
    """Every number the guide quotes from a notebook, with the notebooks it may come from."""
    found = []
    for chapter, first, block in blocks(guide_text):
        cited = cited_notebooks(block)
        explicit = bool(cited)
        if not cited and chapter is not None:
            cited = [f"{chapter:02d}"]
        if not cited:
            continue
        prose = prose_only(block)
        for match in QUOTED_NUMBER.finditer(prose):
            may_match = targets(match, prose[:match.start()])
            if may_match:
                line = first + prose.count("\n", 0, match.start())
                found.append(Quote(line, match[0], tuple(cited), explicit, may_match))
    return found


def numbers_in(text: str) -> dict[bool, list[float]]:
    """The numbers of a text, sorted: all of them (under False) and the decimals only (under True).
    1,800 and 20_000 read as 1800 and 20000; 0.5 and 1e-3 are decimals."""
    numbers = ANY_NUMBER.findall(text)
    return {decimal: sorted(float(re.sub("[,_]", "", n)) for n in numbers if not decimal or DECIMAL.search(n))
            for decimal in (False, True)}


def notebook_numbers(path: Path) -> dict[str, dict[bool, list[float]]]:
    """The numbers of a notebook's outputs, markdown cells and code cells, as numbers_in gives them."""
    texts = {source: [] for source in SOURCES}
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        texts["markdown" if cell["cell_type"] == "markdown" else "code"].append("".join(cell["source"]))
        for output in cell.get("outputs", []):
            texts["outputs"].append("".join(output.get("text", "")))
            for kind in ("text/plain", "text/markdown", "text/html"):
                texts["outputs"].append("".join(output.get("data", {}).get(kind, "")))
    return {source: numbers_in("\n".join(parts)) for source, parts in texts.items()}


def contains(numbers: dict[bool, list[float]], target: Target) -> bool:
    """True if one of the numbers rounds to the target, i.e. lies within its half-width of it."""
    pool, margin = numbers[target.decimal], target.half_width * (1 + 1e-9)
    i = bisect.bisect_left(pool, target.value - margin)
    return i < len(pool) and pool[i] <= target.value + margin


def where_found(quote: Quote, notebooks: dict[str, dict[str, dict[bool, list[float]]]]) -> str | None:
    """The first of SOURCES of a cited notebook that holds the quote, else None."""
    for source in SOURCES:
        for nb in quote.notebooks:
            if nb in notebooks and any(contains(notebooks[nb][source], t) for t in quote.targets):
                return source
    return None


def check(guide: Path = GUIDE, notebook_dir: Path = NOTEBOOKS, only: str | None = None) -> list[Result]:
    """Look up every quote of the guide (of notebook `only`, if given) in the notebooks it cites."""
    notebooks = {path.name[:2]: notebook_numbers(path) for path in sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))}
    results = []
    for quote in quotes(guide.read_text(encoding="utf-8")):
        if only is not None and only not in quote.notebooks:
            continue
        allowed = any((nb, quote.text) in ALLOWED for nb in quote.notebooks)
        results.append(Result(quote, "allowed" if allowed else where_found(quote, notebooks)))
    return results


def describe(quote: Quote) -> str:
    """'cites notebook 05', 'cites notebooks 05, 06' or 'chapter 5: notebook 05'."""
    names = ", ".join(quote.notebooks)
    plural = "s" if len(quote.notebooks) > 1 else ""
    return f"cites notebook{plural} {names}" if quote.explicit else f"chapter {int(names)}: notebook {names}"


def missing_line(guide_name: str, result: Result) -> str:
    quote = result.quote
    their = "their" if len(quote.notebooks) > 1 else "its"
    return f"{guide_name}:{quote.line}: {quote.text} ({describe(quote)}) not in {their} outputs"


def unused_allowances(results: list[Result], only: str | None = None) -> list[tuple[str, str]]:
    """The ALLOWED entries (of notebook `only`, if given) that match no quote."""
    used = {(nb, r.quote.text) for r in results if r.found == "allowed" for nb in r.quote.notebooks}
    return [key for key in ALLOWED if key not in used and only in (None, key[0])]


RERUN_HINT = ("If you re-ran or saved notebooks yourself (quick mode, or in JupyterLab), their outputs are no longer "
              "the committed real run that the guide quotes: `git checkout notebooks/` restores them.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", metavar="NN", help="check only the numbers quoted from notebook NN")
    parser.add_argument("--list", action="store_true", help="print every number checked and where it was found")
    parser.add_argument("--guide", type=Path, default=GUIDE, help=argparse.SUPPRESS)
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = args.notebook.zfill(2) if args.notebook else None
    results = check(args.guide, args.notebooks, only)
    for result in results:
        quote = result.quote
        if args.list:
            print(f"{args.guide.name}:{quote.line}: {quote.text:>12}  {describe(quote):<26} {result.found or 'MISSING'}")
        elif result.found is None:
            print(missing_line(args.guide.name, result))
    unused = unused_allowances(results, only)
    for nb, text in unused:
        print(f"{Path(__file__).name}: ALLOWED entry ({nb!r}, {text!r}) matches no quote of notebook {nb}: "
              "remove it")
    counts = {kind: sum(r.found == kind for r in results) for kind in (*SOURCES, "allowed", None)}
    if counts[None] and not args.list:
        print(RERUN_HINT)
    if args.list:
        print(f"{len(results)} numbers checked: {counts['outputs']} in outputs, {counts['markdown']} only in "
              f"markdown, {counts['code']} only in code, {counts['allowed']} allowed, {counts[None]} missing")
    return 1 if counts[None] or unused else 0


if __name__ == "__main__":
    sys.exit(main())
