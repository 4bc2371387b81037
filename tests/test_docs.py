"""The documentation's code runs.

* Pages: every ``.. code-block:: python`` and inline ``.. plot::`` block, and every
  ``>>>`` doctest block, of the hand-written pages under ``docs/`` (not the generated
  ones) is executed. The snippets of one page run in order in one namespace, as a reader
  would run them, in a temporary working directory; environment variables they set are
  restored afterwards. Plain ``::`` literal blocks are text (the Sphinx configuration
  sets ``highlight_language = "none"``), so Python code in the docs must use one of the
  executed forms.
* Docstrings: the examples in the docstrings of every module of the ``skkfac`` package
  run through :mod:`doctest`; they are also what the API reference shows.
"""

from __future__ import annotations

import doctest
import importlib
import io
import os
import pkgutil
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import skkfac

DOCS = Path(__file__).resolve().parents[1] / "docs"
#: Folders of ``docs/`` that hold generated or template files, not pages.
NOT_PAGES = {"_build", "_templates", "generated"}
PYTHON_LANGUAGES = {"python", "python3", "py", "pycon", "ipython"}
#: Languages of code blocks that are shown but not run (shell commands, output).
SHOWN_ONLY_LANGUAGES = {"bash", "console", "shell", "sh", "text", "none", "ini", "toml"}

DIRECTIVE = re.compile(
    r"^(?P<indent>[ ]*)\.\.[ ]+(?P<name>code-block|code|sourcecode|plot)::[ ]*(?P<arg>\S*)[ ]*$"
)
OPTION = re.compile(r"^[ ]+:[\w-]+:")


@dataclass
class Snippet:
    page: Path
    line: int  # 1-based line of the snippet's first source line in the page
    kind: str  # "code" or "doctest"
    source: str


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def extract_snippets(page: Path) -> list[Snippet]:
    """The executable snippets of an reStructuredText page, in page order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    i = 0
    while i < len(lines):
        match = DIRECTIVE.match(lines[i])
        if match is None:
            if lines[i].lstrip().startswith(">>>"):
                start = i
                while i < len(lines) and lines[i].strip():
                    i += 1
                source = textwrap.dedent("\n".join(lines[start:i]))
                snippets.append(Snippet(page, start + 1, "doctest", source))
                continue
            i += 1
            continue
        indent, name = _indent(lines[i]), match["name"]
        language = match["arg"].lower()
        i += 1
        while i < len(lines) and OPTION.match(lines[i]) and _indent(lines[i]) > indent:
            i += 1
        body_start = i
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
            i += 1
        body = lines[body_start:i]
        while body and not body[-1].strip():
            body.pop()
        first = next((k for k, line in enumerate(body) if line.strip()), None)
        if first is None:
            continue
        source = textwrap.dedent("\n".join(body[first:]))
        if name == "plot":
            if language:  # ``.. plot:: file.py``: a script file, not inline code
                raise AssertionError(f"{page}:{body_start}: use inline code in .. plot::")
        elif language in SHOWN_ONLY_LANGUAGES:
            continue
        elif language not in PYTHON_LANGUAGES:
            raise AssertionError(f"{page}:{body_start}: code block in unknown language "
                                 f"{language!r}; use python (run) or bash/text (shown)")
        kind = "doctest" if source.lstrip().startswith(">>>") else "code"
        snippets.append(Snippet(page, body_start + first + 1, kind, source))
    return snippets


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.rst")
                  if not NOT_PAGES.intersection(p.relative_to(DOCS).parts[:-1]))


PAGES = _pages()


def _run(snippet: Snippet, namespace: dict) -> None:
    if snippet.kind == "code":
        # Pad with newlines so that tracebacks point at the page's own line numbers.
        code = compile("\n" * (snippet.line - 1) + snippet.source, str(snippet.page), "exec")
        exec(code, namespace)
        return
    parser = doctest.DocTestParser()
    test = parser.get_doctest(snippet.source, namespace, snippet.page.name,
                              str(snippet.page), snippet.line - 1)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    runner.run(test, out=report.write, clear_globs=False)
    assert runner.failures == 0, report.getvalue()


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A scratch working directory, a non-interactive matplotlib, restored environment.

    The snippets train tiny networks: one PyTorch thread is faster for them than several,
    and avoids the large slow-downs of busy-waiting threads on a loaded machine.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    environ = dict(os.environ)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)
    os.environ.clear()
    os.environ.update(environ)
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def test_pages_are_found():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {"index.rst", "getting_started.rst", "benchmarks.rst", "api.rst",
            "user_guide/kfac.rst", "user_guide/pytorch.rst"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_snippets_run(page, sandbox):
    snippets = extract_snippets(page)
    if any("matplotlib" in snippet.source for snippet in snippets):
        pytest.importorskip("matplotlib")  # in the bench and docs extras
    namespace = {"__name__": "__docs__"}
    for snippet in snippets:
        _run(snippet, namespace)


def test_snippets_are_extracted():
    """Guard the extractor itself: the pages that show code yield snippets of each form."""
    counts = {p.relative_to(DOCS).as_posix(): extract_snippets(p) for p in PAGES}
    assert len(counts["getting_started.rst"]) >= 4
    assert any("plt." in s.source for s in counts["user_guide/learning_curves.rst"])
    assert all(s.kind == "code" for s in counts["user_guide/kfac.rst"])
    assert sum(len(s) for s in counts.values()) >= 20


MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(skkfac.__path__, "skkfac."))


@pytest.mark.parametrize("module_name", ["skkfac", *MODULES])
def test_docstring_examples_run(module_name, sandbox):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for test in finder.find(module, module_name):
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()


def test_public_names_have_examples():
    """Every public estimator, the optimizer and the network builder show an example."""
    from skkfac.nn import build_mlp

    for obj in (skkfac.KFACRegressor, skkfac.KFACClassifier, skkfac.KFACAutoencoder,
                skkfac.KFAC, build_mlp):
        assert "Examples\n" in (obj.__doc__ or ""), obj.__qualname__


def test_readme_python_blocks_run(sandbox):
    """The README's ```python blocks run, in order, in one namespace."""
    readme = DOCS.parent / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    namespace = {"__name__": "__readme__"}
    for block in blocks:
        exec(compile(block, str(readme), "exec"), namespace)
