"""The README's commands as a new user runs them: after the main job, its next steps work as written
(.ci/run runs the blocks for real on a fresh clone; this checks they agree with each other)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from gdn_tune.constants import DEFAULT_DB_URL

ROOT = Path(__file__).resolve().parent.parent


def readme_block(step: str) -> str:
    """The fenced block after `<!-- ci:STEP -->`, as .ci/run reads it."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- ci:{step} -->\n```bash\n(.*?)```", text, re.S)
    assert match, f"README.md has no ci:{step} block"
    return match.group(1)


def commands(block: str) -> list[list[str]]:
    """Each `gdn-tune ...` command of a block, as its words (comments and `&&` split off)."""
    found = []
    for line in block.splitlines():
        for part in line.split("#")[0].split("&&"):
            words = shlex.split(part)
            if words[:1] == ["gdn-tune"]:
                found.append(words[1:])
    return found


def option(words: list[str], name: str, default: str | None = None) -> str | None:
    return words[words.index(name) + 1] if name in words else default


def test_the_next_steps_read_what_the_main_job_wrote():
    main, next_steps = commands(readme_block("main")), commands(readme_block("next"))
    assert {c[0] for c in main} == {"sweep", "export"}
    assert {"status", "report", "trials", "summary"} <= {c[0] for c in next_steps}
    databases = {option(c, "--db", DEFAULT_DB_URL) for c in main + next_steps if c[0] != "check"}
    assert databases == {DEFAULT_DB_URL}, databases  # the sweep's database is the one the others read
    (export,) = [c for c in main if c[0] == "export"]
    (check,) = [c for c in next_steps if c[0] == "check"]
    assert option(check, "--config-dir") == option(export, "--out")
    assert "--allow-interpreter-timings" in export and "--allow-interpreter-timings" in check


def test_ci_runs_the_next_steps_after_the_main_job():
    assert "for step in setup main next test; do" in (ROOT / ".ci" / "run").read_text()
