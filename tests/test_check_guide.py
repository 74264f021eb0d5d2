"""tools/check_guide.py: the numbers the guide quotes from a notebook are in its saved outputs.

The rules are tested on a small hand-written guide and a fake notebook; the last tests run the check on
the repository's learning_guide.md and notebooks.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import check_guide  # noqa: E402

GUIDE = """\
# A guide

Version 3.11 of nothing, before any chapter: 123.4 is not checked.

## 5. Training

Notebook 05 reaches 3.056 bits per byte after 1,800 steps.
The notebook's text says 0.4189, and its code 20,000.

A stale claim: 3.100 bits per byte (notebook 05).

Rounded, in the chapter's notebook: 3.06 and 3.1, but not 7.00.

Math is not checked: $x = 2.718$ and $$y = 9.81$$, nor `lr=2.5e-3`, nor [a link](notebooks/05_x.ipynb#1234).

```
fenced code: 8.888 is not checked
```

| steps | bits/byte |
|---|---|
| 1,800 | 3.056 |
"""


def notebook(cells: list[dict]) -> dict:
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


FAKE_05 = notebook([
    {"cell_type": "markdown", "metadata": {}, "source": ["The exact NLL is 0.4189 nats.\n"]},
    {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": ["n = 20_000\n"], "outputs": [
        {"output_type": "stream", "name": "stdout",
         "text": ["step    1800: val NELBO 5.2904 nats/token, 3.056 bits/byte\n", "step 7\n"]},
        {"output_type": "execute_result", "execution_count": 1, "metadata": {},
         "data": {"text/plain": ["1800"], "image/png": "iVBOR 7.001 3.100"}},
    ]},
])


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A guide and a notebooks folder holding one fake notebook 05; no allowed exceptions."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "05_training.ipynb").write_text(json.dumps(FAKE_05), encoding="utf-8")
    (tmp_path / "guide.md").write_text(GUIDE, encoding="utf-8")
    monkeypatch.setattr(check_guide, "ALLOWED", {})
    return tmp_path


def found(repo: Path, **kwargs) -> dict[tuple[int, str], str | None]:
    """{(line, number as written): where it was found} for the fake guide."""
    results = check_guide.check(repo / "guide.md", repo / "notebooks", **kwargs)
    return {(r.quote.line, r.quote.text): r.found for r in results}


def line_of(text: str) -> int:
    return next(i for i, line in enumerate(GUIDE.splitlines(), start=1) if text in line)


def quoted(text: str) -> list[str]:
    """The numbers a one-paragraph chapter 1 quotes."""
    return [q.text for q in check_guide.quotes("## 1. Tokenization\n\n" + text + "\n")]


def test_a_quoted_number_in_the_outputs_is_found(repo):
    where = found(repo)
    line = line_of("Notebook 05 reaches")
    assert where[(line, "3.056")] == "outputs"      # stream text
    assert where[(line, "1,800")] == "outputs"      # 1800 in text/plain
    assert where[(line_of("| 1,800 |"), "3.056")] == "outputs"  # a table cites its chapter's notebook


def test_a_stale_number_fails_with_a_message_naming_its_line(repo, capsys):
    assert found(repo)[(line_of("A stale claim"), "3.100")] is None      # in the image only: not an output
    assert check_guide.main(["--guide", str(repo / "guide.md"), "--notebooks", str(repo / "notebooks")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"guide.md:{line_of('A stale claim')}: 3.100 (cites notebook 05) not in its outputs" in out
    assert f"guide.md:{line_of('Rounded')}: 7.00 (chapter 5: notebook 05) not in its outputs" in out
    assert out[-1] == check_guide.RERUN_HINT and "git checkout notebooks/" in out[-1]
    assert len(out) == 3


def test_a_rounded_quote_matches_only_what_rounds_to_it(repo):
    where = found(repo)
    line = line_of("Rounded")
    assert where[(line, "3.06")] == "outputs"       # 3.056 rounds to 3.06
    assert where[(line, "3.1")] == "outputs"        # and to 3.1
    assert where[(line, "7.00")] is None            # "step 7" is an integer, and 7.001 is in an image
    notebooks = {"05": check_guide.notebook_numbers(repo / "notebooks" / "05_training.ipynb")}
    stale = check_guide.quotes("## 5. T\n\n3.05 is not 3.056 rounded.\n")[0]
    assert check_guide.where_found(stale, notebooks) is None


def test_numbers_in_math_code_links_headings_and_fences_are_not_checked(repo):
    texts = {text for _, text in found(repo)}
    assert not texts & {"2.718", "9.81", "2.5e-3", "1234", "8.888", "123.4", "3.11"}


def test_a_number_found_only_in_markdown_or_code_is_reported_as_such(repo, capsys):
    line = line_of("The notebook's text says")
    where = found(repo)
    assert where[(line, "0.4189")] == "markdown"
    assert where[(line, "20,000")] == "code"        # 20_000 in a code cell
    check_guide.main(["--list", "--guide", str(repo / "guide.md"), "--notebooks", str(repo / "notebooks")])
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary == ("10 numbers checked: 6 in outputs, 1 only in markdown, 1 only in code, 0 allowed, "
                       "2 missing")


def test_which_numbers_count():
    assert quoted("6 steps in 2024, chapter 4, 46% of 12,345 and 85.2% of 4096, 0.98M and 3.6e-4") == \
        ["12,345", "85.2%", "4096", "0.98M", "3.6e-4"]
    # equation-like: next to ^ / *, after ln; parts of words and versions; bare powers of ten
    assert quoted("2^24, 1/200, 0.02 / sqrt(2), 3 * 100, ln 511, float32, H100, torch 2.11.0, 1e-3") == []
    assert quoted("A sentence ends with 5.290. Then +0.53 and (136 ms) count.") == ["5.290", "0.53", "136"]


def test_citations_links_and_chapters():
    guide = ("## 3. Model\n\nSee [notebook 08](notebooks/08_eval.ipynb): 1.158.\n\n"
             "Notebook 04 and notebook 06's table: 0.4189.\n\n- a list item of chapter 3: 4.26\n\n"
             "## Troubleshooting\n\nno chapter, no citation: 2.53\n")
    found = {q.text: (q.notebooks, q.explicit) for q in check_guide.quotes(guide)}
    assert found == {"1.158": (("08",), True), "0.4189": (("04", "06"), True), "4.26": (("03",), False)}


def test_allowed_exceptions_and_stale_entries(repo, monkeypatch, capsys):
    monkeypatch.setattr(check_guide, "ALLOWED", {("05", "3.100"): "a reason", ("05", "9.999"): "stale"})
    assert found(repo)[(line_of("A stale claim"), "3.100")] == "allowed"
    assert check_guide.main(["--guide", str(repo / "guide.md"), "--notebooks", str(repo / "notebooks")]) == 1
    out = capsys.readouterr().out
    assert "3.100" not in out and "('05', '9.999') matches no quote" in out


def test_only_one_notebook(repo):
    assert found(repo, only="07") == {}
    assert len(found(repo, only="05")) == 10


# --- the repository --------------------------------------------------------------------------------

def test_the_repository_guide_quotes_numbers_from_existing_notebooks():
    results = check_guide.check()
    cited = {nb for r in results for nb in r.quote.notebooks}
    existing = {p.name[:2] for p in check_guide.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")}
    assert len(results) > 200 and len(cited) >= 6     # the rules still find the guide's numbers
    assert cited <= existing
    assert check_guide.unused_allowances(results) == []


def test_every_number_the_guide_quotes_is_in_its_notebook():
    missing = [check_guide.missing_line("learning_guide.md", r) for r in check_guide.check() if r.found is None]
    assert not missing, "\n".join([*missing, check_guide.RERUN_HINT])
