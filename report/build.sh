#!/usr/bin/env bash
# Rebuilds the report from a fresh demonstration run: builds the binaries, plays
# chittychat-demo into report/run/ (replacing the previous run), checks and draws it
# with chittychat-trace, and typesets report.md into report.pdf.
#
# Needs pandoc, weasyprint and python3 (which weasyprint brings; Debian:
# apt-get install pandoc weasyprint). SEED=n picks another script (default 1);
# REPORT_DATE sets the date on the title page (default: today).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in pandoc weasyprint python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "report/build.sh: error: $tool is missing; install it with: apt-get install -y pandoc weasyprint" >&2
        exit 1
    fi
done

cargo build --quiet --bins
bin=target/debug
run=report/run
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The report describes exactly one run: the previous one goes.
rm -rf "$run"
"$bin/chittychat-demo" --seed "${SEED:-1}" --out "$run" >"$work/demo.txt"
# The run folder was the server's data directory; the report needs its logs, not
# its database.
rm -f "$run/chittychat.redb" "$run/owner"
cp "$work/demo.txt" "$run/demo.txt"

# The pieces the report includes.
grep -E '^ *[0-9]+\. ' "$run/demo.txt" >"$run/steps.txt"
"$bin/chittychat-trace" check "$run" >"$run/check.txt"
"$bin/chittychat-trace" concurrent --limit 2 "$run" >"$run/concurrent.txt"
"$bin/chittychat-trace" timeline "$run" >"$work/timeline.txt"
# The first participant's story: its own events, and the broadcasts about it.
first=$(sed -n 's/^ *1\. \(.*\) joins$/\1/p' "$run/steps.txt")
awk -v who="$first" 'NR == 1 || $2 == who || ($2 == "server" && ($5 == who || $5 == who ":"))' \
    "$work/timeline.txt" >"$run/story.txt"
"$bin/chittychat-trace" diagram "$run" --only "$first" --svg "$run/story.svg" >/dev/null

# Inline the run (report/inline.py: the directives of report.md), then typeset.
python3 report/inline.py report/report.md >"$work/report.md"
pandoc "$work/report.md" --standalone --self-contained --resource-path=report \
    --metadata date="${REPORT_DATE:-$(date -u '+%-d %B %Y')}" --metadata toc-title=Contents \
    --css report/style.css --toc --toc-depth=1 -o "$work/report.html"
weasyprint "$work/report.html" report/report.pdf
echo "wrote report/report.pdf from the run in $run"
