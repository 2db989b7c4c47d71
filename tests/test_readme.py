"""The README tells the truth: its paper table is panet_lite.paper's, its notebooks exist."""
import re
from pathlib import Path

from panet_lite.paper import markdown_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_paper_table_is_the_package_table():
    assert markdown_table() in README


def test_every_notebook_the_readme_links_exists_and_every_chapter_is_linked():
    linked = set(re.findall(r"\((notebooks/[^)]+\.ipynb)\)", README))
    assert linked and all((ROOT / p).is_file() for p in linked)
    chapters = {f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert chapters <= linked


def test_readme_commands_are_real_cli_commands():
    from panet_lite.cli import COMMANDS

    used = set(re.findall(r"python -m panet_lite (\w+)", README))
    assert used and used <= set(COMMANDS)
