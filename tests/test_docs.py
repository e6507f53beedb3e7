"""The documentation builds, and every link and anchor in it leads somewhere: MkDocs, strict,
over docs/ (the site), and over the README and bench/README.md with the files they link to."""

import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

MKDOCS = [sys.executable, "-m", "mkdocs"]


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MKDOCS, "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=120)


def test_the_docs_build_strictly(tmp_path):
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "jobs" / "index.html").exists()


def test_every_link_and_anchor_of_the_readmes_resolves(tmp_path):
    """The README and bench/README.md, built as pages beside every file of the checkout they
    may link to: a link to a missing file or heading is a warning, and --strict fails on it."""
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    source = tmp_path / "checkout"
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"site_name: links\ndocs_dir: {source}\nstrict: true\n"
                      "markdown_extensions: [toc, tables, fenced_code]\n"
                      "validation: {omitted_files: info, absolute_links: info, unrecognized_links: warn, "
                      "anchors: warn, not_found: warn}\n")
    result = build(config, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_anchor_fails_the_build(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the part](other.md#no-such-part).\n")
    (docs / "other.md").write_text("# Other\n\n## A part\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"site_name: t\ndocs_dir: {docs}\nstrict: true\nvalidation: {{anchors: warn}}\n")
    result = build(config, tmp_path / "site")
    assert result.returncode != 0 and "no-such-part" in result.stdout + result.stderr
