"""Man pages for dpagent(8) and agentctl(8), written from their argparse parsers and agent.manual.

`python -m agent.manpage agentctl > agentctl.8`. The synopsis and options come
from the parser that `--help` prints, the prose from the same agent.manual
pages, so the package's man pages cannot drift from the commands' help.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import date

from agent import manual

SECTION = "8"
SEE_ALSO = {"dpagent": ("agentctl(8)", "systemd.service(5)"), "agentctl": ("dpagent(8)",)}


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Each command's parser, as `--help` builds it."""
    from agent.cli import build_parser as agentctl
    from agent.runtime.main import build_parser as dpagent

    return {"dpagent": dpagent(), "agentctl": agentctl()}


def escape(text: str) -> str:
    """Text safe in a roff line: backslashes and dashes escaped, no control character first."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.MULTILINE)


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def _paragraphs(page: manual.Page) -> list[str]:
    return [line for text in page.description for line in (".PP", escape(text))]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, (argparse._SubParsersAction, argparse._HelpAction)) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else f" \\fI{escape(action.metavar or action.dest.upper())}\\fR"
            names = ", ".join(f"\\fB{escape(o)}\\fR{metavar}" for o in action.option_strings)
        else:
            names = f"\\fI{escape(action.metavar or action.dest)}\\fR"
        text = action.help or ""
        if action.choices and not action.option_strings:
            text = f"{text} One of: {', '.join(map(str, action.choices))}.".strip()
        lines += [".TP", names, escape(text % vars(action) if "%(" in text else text)]
    return lines


def _exit_status(page: manual.Page) -> list[str]:
    return [line for code, text in page.exit_status for line in (".TP", f"\\fB{code}\\fR", escape(text))]


def _examples(page: manual.Page) -> list[str]:
    return [line for command, text in page.examples for line in (".TP", f"\\fB{escape(command)}\\fR", escape(text))]


def render(name: str, parser: argparse.ArgumentParser, version: str = "", today: date | None = None) -> str:
    page = manual.PAGES[name]
    summary = f"{escape(parser.prog)} \\- {escape(page.summary)}"
    out = [
        f'.TH {name.upper()} {SECTION} "{(today or date.today()).isoformat()}" "dpagent {version}" '
        '"System Administration"',
        ".SH NAME", summary,
        ".SH SYNOPSIS", ".nf", escape(_usage(parser)), ".fi",
        ".SH DESCRIPTION", *_paragraphs(page),
        ".SH OPTIONS", *_options(parser),
    ]
    verbs = manual.verbs(parser)
    if verbs:
        out.append(".SH COMMANDS")
        for verb, sub in verbs.items():
            out += [".SS " + escape(verb), ".nf", escape(_usage(sub)), ".fi"]
            sub_page = manual.PAGES.get(f"{name} {verb}")
            out += _paragraphs(sub_page) if sub_page else [".PP", escape(_help_of(parser, verb))]
            out += _options(sub)
            if sub_page and sub_page.examples:
                out += [".PP", "Examples:", *_examples(sub_page)]
    if page.exit_status:
        out += [".SH EXIT STATUS", *_exit_status(page)]
    if page.examples:
        out += [".SH EXAMPLES", *_examples(page)]
    out += [".SH SEE ALSO", ", ".join(f"\\fB{escape(ref.split('(')[0])}\\fR({ref.split('(')[1]}"
                                      for ref in SEE_ALSO.get(name, ()))]
    return "\n".join(out) + "\n"


def _help_of(parser: argparse.ArgumentParser, verb: str) -> str:
    """A verb's one-line help, for a verb that has no manual page of its own."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == verb:
                    return choice.help or ""
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.manpage", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["dpagent", "agentctl"])
    parser.add_argument("--version", default="", help="the version the page's footer names")
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.command, parsers()[args.command], args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
