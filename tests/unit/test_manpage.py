"""The man pages and `--help` say the same (agent.manual through agent.manpage), and roff accepts the pages."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess

import pytest

from agent import manual, manpage

PARSERS = manpage.parsers()


def words(text: str) -> str:
    """Text without its layout: roff escapes and font changes undone, whitespace folded."""
    text = re.sub(r"\\f[BIR]", "", text).replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")
    return " ".join(text.split())


def help_text(name: str, *verb: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        PARSERS[name].parse_args([*verb, "--help"])
    assert done.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_command_and_verb_has_a_page_with_exit_codes_and_examples(name):
    for key in [name, *(f"{name} {verb}" for verb in manual.verbs(PARSERS[name]))]:
        page = manual.PAGES.get(key)
        assert page is not None, f"no agent.manual page for {key!r}"
        assert page.description and page.exit_status and page.examples, key


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_and_man_page_carry_the_same_text(name):
    man = words(manpage.render(name, PARSERS[name], "0.1.0"))
    for verb in ["", *manual.verbs(PARSERS[name])]:
        page = manual.PAGES[f"{name} {verb}".strip()]
        shown = words(help_text(name, *filter(None, [verb])))
        for paragraph in page.description:
            assert words(paragraph) in shown
            assert words(paragraph) in man
        for command, what in page.examples:
            assert words(command) in shown and words(command) in man
            assert words(what) in shown
    for code, meaning in manual.PAGES[name].exit_status:
        assert f"{code} {words(meaning)}" in man


def test_the_agentctl_page_lists_every_option_of_every_verb():
    man = words(manpage.render("agentctl", PARSERS["agentctl"]))
    verbs = manual.verbs(PARSERS["agentctl"])
    for parser in [PARSERS["agentctl"], *verbs.values()]:
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in man, (parser.prog, option)
    assert "status --watch" in man and "3 unreachable" in man


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
@pytest.mark.parametrize("name", sorted(PARSERS))
def test_groff_formats_the_page_without_a_warning(name):
    done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=manpage.render(name, PARSERS[name]),
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""


def test_text_that_looks_like_roff_is_escaped():
    assert manpage.escape(".TH x\n'y -z \\") == "\\&.TH x\n\\&'y \\-z \\e"
