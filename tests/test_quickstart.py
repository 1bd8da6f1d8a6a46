"""The README's quick start and CI stay in sync; the CLI lists every stage."""
import re
import subprocess
import sys

from conftest import REPO


def readme_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start.*?```(?:bash)?\n(.*?)```", text, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "snakemake --cores 2" in demo
    assert "pytest" in tests
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in [line.strip() for line in ci]


def test_cli_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ["demo-data", "manifest", "probe", "extract", "prompts", "tokenizer", "train", "evaluate", "report", "score"]:
        assert command in out.stdout
