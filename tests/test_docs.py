"""The README and the guide in docs/ show jobs as they run: every YAML or TOML block in them is a
job this batchnlp accepts (a block with some sections only, such as an `input:` for a bucket, is
checked in the README's main job), its local input paths exist, and every page is in the site's
navigation (what `mkdocs build --strict` in .ci/run builds)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from batchnlp.spec import parse

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SECTIONS = ("input", "task", "model", "runtime", "output")


def example_blocks() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        for match in re.finditer(r"```(yaml|toml)\n(.*?)```", page.read_text(), re.S):
            line = page.read_text()[:match.start()].count("\n") + 1
            found.append((f"{page.relative_to(ROOT)}:{line}", match.group(1), match.group(2)))
    return found


def as_job(kind: str, text: str) -> dict:
    """A block as a whole job: its sections over the main job's (jobs/embed_reviews.yaml)."""
    data = yaml.safe_load(text) if kind == "yaml" else tomllib.loads(text)
    assert isinstance(data, dict) and set(data) <= set(SECTIONS), f"not a job: {sorted(data)}"
    main = yaml.safe_load((ROOT / "jobs" / "embed_reviews.yaml").read_text())
    return {**main, **data}


def test_the_pages_show_example_jobs():
    """The finder finds the README's job and the guide's (a regex that matched nothing would pass
    every test below)."""
    places = [where.split(":")[0] for where, _, _ in example_blocks()]
    assert "README.md" in places and "docs/job-spec.md" in places and "docs/object-storage.md" in places


@pytest.mark.parametrize("where,kind,text", example_blocks(), ids=[w for w, _, _ in example_blocks()])
def test_every_example_job_in_the_docs_is_a_job_batchnlp_accepts(where, kind, text):
    spec = parse(as_job(kind, text), base_dir=ROOT / "jobs")  # relative paths: as a file in jobs/
    if spec.input.path and "://" not in spec.input.path and "*" not in spec.input.path:
        assert Path(spec.input.path).exists(), f"{where}: input.path {spec.input.path} does not exist"


def test_the_readme_shows_the_main_job_as_it_ships():
    """The README's example is jobs/embed_reviews.yaml, the job its first command runs, verbatim."""
    block = re.search(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert block == (ROOT / "jobs" / "embed_reviews.yaml").read_text()


def test_every_page_is_in_the_site_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = {next(iter(item.values())) for item in config["nav"]}
    assert listed == {p.name for p in (ROOT / "docs").glob("*.md")}


def test_the_readme_stays_short_and_links_only_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).exists(), target
