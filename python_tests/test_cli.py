"""The `genrec` console script, and the README / CI contract."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from genrec_ext.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_info_lists_ops_and_kernels(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"torch\s+2\.", out)
    assert re.search(r"genrec::token_merge\s+CPU", out)
    assert re.search(r"genrec::rq_assign\s+CPU", out)


def test_demo_runs_the_pipeline_built_so_far(tmp_path, capsys):
    assert main(["demo", "--seed", "1", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "OK: kernel matches the reference" in out
    assert "-> 0 after resolution" in out  # every synthetic item got a unique SID
    assert (tmp_path / "demo" / "sids" / "sid_table.json").exists()
    assert (tmp_path / "demo" / "data" / "logs.parquet").exists()


def test_help_and_bad_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


@pytest.mark.skipif(shutil.which("genrec") is None, reason="console script not on PATH")
def test_console_script_is_installed():
    result = subprocess.run(["genrec", "info"], capture_output=True, text=True, check=True)
    assert "genrec::token_merge" in result.stdout


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_commands = [line for line in re.findall(r"```bash\n(.*?)```", readme, re.S) if "pytest" in line]
    assert len(test_commands) == 1, "README must show exactly one test command"
    assert test_commands[0].strip() in ci
