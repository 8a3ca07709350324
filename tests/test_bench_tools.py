"""bench/ laid out by job: every tool lies in a job folder and answers ``--help`` when run by its path
(each speed subcommand and data_txt/ script too), a record's command, which names the path of its day, maps to a tool
that exists, and the steps of record.py and reproduce.py run as processes (their tests call the
steps in their own process)."""
import json
import subprocess
import sys

import pytest

from bench.common import MOVED, current_command
from bench.records.steps import run_step
from tests.helpers import ROOT

JOBS = ("records", "studies", "speed", "drills")
TOOLS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bench").rglob("*.py")
               if 'if __name__ == "__main__":' in p.read_text())
DATA_TOOLS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "data_txt").glob("*.py")
                    if 'if __name__ == "__main__":' in p.read_text())

# One fresh interpreter runs every tool as ``python TOOL --help`` would: sys.path holds the tool's folder
# and the interpreter's own paths (not the project root), and the project's modules are forgotten
# between tools, so a tool that cannot import the project by itself fails here as it would for a user.
RUN_AS_SCRIPT = r"""
import runpy, sys
root, commands = sys.argv[1], [c.split() for c in sys.argv[2:]]
project = {p.split("/")[0].removesuffix(".py") for p in __import__("os").listdir(root)}
base = [p for p in sys.path if p not in ("", root)]
for tool, *sub in commands:
    for name in [m for m in sys.modules if m.split(".")[0] in project]:
        del sys.modules[name]
    sys.path[:] = [f"{root}/{tool.rsplit('/', 1)[0]}", *base]
    sys.argv = [f"{root}/{tool}", *sub, "--help"]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    except BaseException as e:
        code = f"{type(e).__name__}: {e}"
    print("RESULT", tool, *sub, "->", code, file=sys.stderr)
"""


def test_every_tool_lies_in_a_job_folder():
    loose = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
    assert loose == ["__init__.py", "common.py"], loose
    assert {t.split("/")[1] for t in TOOLS} == set(JOBS), TOOLS


def test_every_tool_data_txt_script_and_speed_subcommand_answers_help_run_by_its_path(tmp_path):
    from bench.speed.speed import SUBCOMMANDS
    assert DATA_TOOLS == ["data_txt/make_cifar_folder.py", "data_txt/make_test_distributions.py"], DATA_TOOLS
    commands = TOOLS + DATA_TOOLS + [f"bench/speed/speed.py {name}" for name in SUBCOMMANDS]
    proc = subprocess.run([sys.executable, "-c", RUN_AS_SCRIPT, str(ROOT), *commands], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    results = [line.split(" ", 1)[1] for line in proc.stderr.splitlines() if line.startswith("RESULT ")]
    assert len(results) == len(commands), proc.stderr[-3000:]
    failed = [r for r in results if not r.endswith("-> 0")]
    assert not failed, failed


def test_a_records_command_maps_to_a_tool_of_this_tree():
    assert current_command(["python", "bench/record.py", "-c", "x"]) == ["python", "bench/records/record.py", "-c", "x"]
    assert current_command(["bench/label_shift_speed.py", "C"]) == ["bench/speed/speed.py", "label-shift", "C"]
    assert current_command(["python", "bench/studies/validation_size.py", "R"]) == [
        "python", "bench/studies/calibration_study.py", "--training_images", "R"]
    assert all((ROOT / new.split()[0]).is_file() for new in MOVED.values())
    for record in sorted((ROOT / "results").glob("*/record.json")):
        rec = json.loads(record.read_text())
        for key, at in (("command", 1), ("train_command", 0)):
            if rec.get(key):
                assert (ROOT / current_command(rec[key])[at]).is_file(), (record, key)


def test_a_step_runs_as_a_process_from_the_root_and_a_failed_one_ends_the_tool_in_one_line(tmp_path):
    log = tmp_path / "tool.log"
    out = run_step([sys.executable, "-c", "import os, sys; print(os.getcwd()); print('to stderr', file=sys.stderr)"],
                   log, "tool")
    assert out == f"{ROOT}\n"
    text = log.read_text()
    assert text.startswith(f"\n$ {sys.executable} -c ") and text.endswith(f"to stderr\n{ROOT}\n")
    with pytest.raises(SystemExit) as failed:
        run_step([sys.executable, "-c", "import sys; sys.exit(3)"], log, "tool")
    assert failed.value.code.startswith(f"tool: step failed (exit 3), see {log}: -c import sys;")
    assert log.read_text().count("\n$ ") == 2


def test_test_time_config_family_of_each_data_module():
    from bench.studies.test_time_methods import family_config
    from utils.errors import UserError
    assert family_config("prior", "ImageFolderLTDataModule").name == "test_time_folder_prior.json"
    assert family_config("tade", "ImbalanceCIFAR100DataLoader").name == "test_time_cifar100_tade.json"
    for kind in ("prior", "tade"):
        assert family_config(kind, "ImageFolderLTDataModule").is_file()
    with pytest.raises(UserError, match="no test-time config family for data_loader.type MyData"):
        family_config("prior", "MyData")
