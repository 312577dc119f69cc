#!/usr/bin/env python3
"""Inlines the run into report.md for pandoc, as report/build.sh calls it:

    inline.py report/report.md > combined.md

Each directive line, with a path relative to report/, becomes:

    !steps PATH      the demo's numbered script as a list, wrapping under its text
    !mono PATH       console output, each long line wrapping under its own indent
    !timeline PATH   `chittychat-trace timeline` output as a table
    !logs DIR        each *.log of DIR (the server's first) as numbered lines of
                     wrapped monospace, broken between JSON fields

Every page must read on A4 portrait at 100 %: nothing here relies on a line
fitting the page, and nothing is set smaller than 8 pt (see style.css).
Python because weasyprint, which typesets the report, needs it anyway.
"""

import html
import re
import sys
from pathlib import Path

REPORT = Path(__file__).resolve().parent


def raw(block: str) -> str:
    """A raw HTML block that pandoc passes through untouched."""
    return "```{=html}\n" + block + "\n```\n"


def steps(path: Path) -> str:
    items = []
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*(\d+)\.\s+(.*)$", line)
        if m:
            items.append(f'<li value="{m[1]}">{html.escape(m[2])}</li>')
    return raw('<ol class="steps">\n' + "\n".join(items) + "\n</ol>")


def mono(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        lines.append(
            f'<div class="line" style="margin-left: {indent}ch">'
            f"{html.escape(stripped) or '&nbsp;'}</div>"
        )
    return raw('<div class="mono">\n' + "\n".join(lines) + "\n</div>")


# "     12  alice    received #4 ... (server time 7)  (alice.log:6)  {server: 5, alice: 7}"
TIMELINE_ROW = re.compile(
    r"^\s*(\d+)\s{2}(\S+)\s+(.*)\s{2}\(([^()\s]+:\d+)\)(?:\s{2}(\{[^{}]*\}))?$"
)


def timeline(path: Path) -> str:
    """A table; with vector clocks, a column per process holds its entry."""
    lines = path.read_text().splitlines()
    rows = []
    for line in lines[1:]:
        m = TIMELINE_ROW.match(line)
        if not m:
            sys.exit(f"inline.py: {path}: not a timeline row: {line!r}")
        clock = dict(
            (name, count) for name, count in re.findall(r"([^{},: ]+): (\d+)", m[5] or "")
        )
        rows.append(([m[1], m[2], m[3], m[4]], clock))
    # The server first, then every process as its clock first shows it.
    processes = []
    for _, clock in rows:
        for name in clock:
            if name not in processes:
                processes.append(name)
    processes.sort(key=lambda name: name != "server")
    columns = ["Lamport", "process", "event", "log line"]
    if processes:
        # Two header rows: the vector clock's heading over one column per process.
        head = (
            "<tr>"
            + "".join(f'<th rowspan="2">{c}</th>' for c in columns)
            + f'<th colspan="{len(processes)}">vector clock</th></tr>\n<tr>'
            + "".join(f'<th class="vc">{html.escape(p)}</th>' for p in processes)
            + "</tr>"
        )
    else:
        head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    body = []
    for cells, clock in rows:
        cells = [html.escape(c) for c in cells] + [clock.get(p, "0") for p in processes]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    kind = "timeline vector" if processes else "timeline"
    return raw(
        f'<table class="{kind}">\n<thead>{head}</thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )


def logs(folder: Path) -> str:
    paths = sorted(folder.glob("*.log"), key=lambda p: (p.name != "server.log", p.name))
    out = []
    for path in paths:
        items = []
        for line in path.read_text().splitlines():
            # Inside a JSON string a quote is always escaped, so a bare `,"` only
            # ever starts the next field. Each field is a unit (an inline block)
            # that moves whole to the next line, and breaks at its own spaces
            # only when it is longer than a line; a zero-width space between
            # fields lets the line break there (weasyprint ignores <wbr>).
            fields = line.split(',"')
            fields = fields[:1] + ['"' + f for f in fields[1:]]
            spans = [
                f'<span class="field">{html.escape(f, quote=False)}'
                f"{',' if i + 1 < len(fields) else ''}</span>"
                for i, f in enumerate(fields)
            ]
            items.append("<li>" + "\u200b".join(spans) + "</li>")
        out.append(
            f'<p class="logname"><strong>{html.escape(path.name)}</strong></p>\n'
            + raw('<ol class="log">\n' + "\n".join(items) + "\n</ol>")
        )
    return "\n".join(out)


DIRECTIVES = {"steps": steps, "mono": mono, "timeline": timeline, "logs": logs}


def main() -> None:
    for line in Path(sys.argv[1]).read_text().splitlines():
        m = re.match(r"^!(\w+) (\S+)$", line)
        if not m:
            print(line)
        elif m[1] in DIRECTIVES:
            print(DIRECTIVES[m[1]](REPORT / m[2]))
        else:
            sys.exit(f"inline.py: unknown directive: {line}")


if __name__ == "__main__":
    main()
