"""The README tells the truth: its paper table is panet_lite.paper's, its notebooks exist, and it
(like docs/ and every chapter) links only to the project's own files or to public web pages."""
import json
import re
from pathlib import Path

from panet_lite.paper import markdown_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PAPER = "https://arxiv.org/abs/1908.06391"
AUTHORS_CODE = "https://github.com/kaixin96/PANet"


def notebook_text(path: Path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])


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


def test_readme_and_chapter_0_link_the_paper_the_authors_code_and_the_protocol_page():
    welcome = notebook_text(ROOT / "notebooks" / "00_welcome.ipynb")
    for text, protocol in ((README, "(docs/protocol.md)"), (welcome, "(../docs/protocol.md)")):
        assert f"({PAPER})" in text and f"({AUTHORS_CODE})" in text and protocol in text


def test_links_stay_inside_the_project():
    texts = {ROOT / "README.md": README, **{p: p.read_text() for p in (ROOT / "docs").glob("*.md")}}
    texts |= {p: notebook_text(p) for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert ROOT / "docs" / "protocol.md" in texts
    for path, text in texts.items():
        assert "PANET_SPEC" not in text and "shared/" not in text, f"{path.name} points outside the project"
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("https://", "http://", "#")):
                continue
            resolved = (path.parent / target.split("#")[0]).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{path.name}: broken link {target}"


def test_every_module_of_the_package_is_in_the_readme_layout():
    layout = README.split("## Layout", 1)[1].split("```")[1]
    package = Path(__file__).resolve().parents[1] / "panet_lite"
    modules = sorted(p.name for p in package.glob("*.py") if not p.name.startswith("__"))
    assert [m for m in modules if m not in layout] == []


def test_every_command_in_the_readme_parses():
    """Each `python -m panet_lite ...` and `torchrun ... -m panet_lite ...` line of the README's and the chapters' code blocks
    (continuation lines joined, comments dropped) is accepted by the command line's parser as written."""
    import shlex

    from panet_lite.cli import build_parser

    chapters = "".join(notebook_text(path) for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    blocks = re.findall(r"```bash\n(.*?)```", README + chapters, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    commands = [line.split("#")[0] for line in lines if re.search(r"-m panet_lite \w", line.split("#")[0])]
    assert len(commands) >= 10
    for command in commands:
        tokens = shlex.split(command)
        args = tokens[tokens.index("panet_lite") + 1:]
        try:
            build_parser().parse_args(args)
        except SystemExit as exit:
            if exit.code == 0:  # --help
                continue
            raise AssertionError(f"the README's command does not parse: {command.strip()}") from None
