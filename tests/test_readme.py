"""The README's set-up commands are the ones CI runs."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def command_under(heading):
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    return re.search(r"```\n(.*?)\n```", section, re.S).group(1)


def test_ci_runs_the_readme_test_command():
    command = command_under("Run the tests")
    assert "\n" not in command
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_main_command_installs_and_runs_a_search():
    command = command_under("Set up and run")
    assert "\n" not in command
    assert "pip install --no-build-isolation --no-deps -e ." in command
    assert "darts-fast search" in command
