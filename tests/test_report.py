"""`make report` and `make verify` as a user types them (issue 16): the report from two tiny runs is
valid HTML whose every image exists; verify tabulates claims per seed and skips what already ran."""
from __future__ import annotations

from html.parser import HTMLParser

from helpers import cli, make


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.images, self.headings = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in ("meta",):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("h1", "h2", "h3"):
            self.headings.append(data)



def test_make_report_from_two_tiny_runs_is_html_whose_images_exist(tmp_path):
    for fid in ("lee-s10", "liu-2"):
        res = cli(f"figure={fid}", "scale=smoke", out_root=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    stopped = tmp_path / "jacot-1" / "smoke" / "stopped"
    stopped.mkdir(parents=True)
    (stopped / "run.json").write_text('{"state": "interrupted", "figure": "jacot-1", "scale": "smoke"}')
    res = make("report", f"ARGS=--out-root {tmp_path}")
    assert res.returncode == 0, res.stdout + res.stderr
    index, md = tmp_path / "report" / "index.html", tmp_path / "report" / "REPORT.md"
    assert index.is_file() and md.is_file()
    page = _Page()
    page.feed(index.read_text())
    page.close()
    assert page.stack == ["html"] or page.stack == [], page.stack  # every tag closed
    assert len(page.images) == 2 and all((index.parent / src).is_file() for src in page.images), page.images
    assert {"lee-s10 at smoke scale", "liu-2 at smoke scale"} <= set(page.headings)
    summary = md.read_text().split("\n## ")[0]
    assert "| lee-s10 |" in summary and "| jacot-2 | not run" in summary
    assert "| jacot-1 | no finished run (interrupted) | not run |" in summary


def test_make_verify_tabulates_each_seed_and_skips_what_already_ran(tmp_path):
    args = ("verify", "SCALE=smoke", "SEEDS=1,2", "FIGURES=lee-s10", f"ARGS=out_root={tmp_path}")
    first = make(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (table,) = list((tmp_path / "verify").glob("*/verify.md"))
    rows = [ln for ln in table.read_text().splitlines() if ln.startswith("| lee-s10 |")]
    assert rows and all("| not evaluated |" in r for r in rows), rows  # smoke: computed, not evaluated
    assert len(list((tmp_path / "verify" / "runs" / "lee-s10" / "smoke").glob("2*"))) == 2
    again = make(*args)
    assert again.returncode == 0 and again.stdout.count("already ran at code version") == 2, again.stdout
    assert len(list((tmp_path / "verify" / "runs" / "lee-s10" / "smoke").glob("2*"))) == 2


def test_report_html_renders_the_tables_runs_write():
    # a run's table (Table S1 is right-aligned: |---:|) stays a table; its title sits below the figure's
    # heading; bold and code render
    from ntkrepro.report import to_html

    page = to_html("## lee-4\n\n#### Table S1\n\n| group | size |\n|:---|---:|\n| conv1 | 32 |\n\n"
                   "**lee-4.md** (written by the run) `x`\n")
    assert "<td>---:</td>" not in page and "<td>conv1</td><td>32</td>" in page
    assert "<h1>" not in page and "<b>lee-4.md</b>" in page and "<code>x</code>" in page
