"""Every user mistake is one line on stderr and exit code 2, and nothing is written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpo.cli.main import main
from tests.conftest import CONF

TOY = ["study=toy", "study.epoch_s=0"]

# (what the user typed after `hpo tune study=toy`, a piece of the one-line message)
TUNE_MISTAKES: list[tuple[list[str], str]] = [
    (["study=nope"], r"unknown study 'nope' \(options: "),
    (["pruner=nope"], r"unknown pruner 'nope'"),
    (["sampler=nope"], r"unknown sampler 'nope'"),
    (["storage=nope"], r"unknown storage 'nope'"),
    (["par=0"], r"par must be an integer >= 1 or 'auto', got 0"),
    (["par=abc"], r"par must be an integer >= 1 or 'auto', got 'abc'"),
    (["study.n_trials=-1"], r"study.n_trials must be >= 0, got -1"),
    (["study.epochs=0"], r"study.epochs must be >= 1, got 0"),
    (["study.direction=up"], r"study.direction must be maximize or minimize, got 'up'"),
    (["study.device=tpu"], r"study.device must be auto, cpu, cuda or sim, got 'tpu'"),
    (["study.name=a/b"], r"study.name must be a plain file name"),
    (["study.objective=nocolon"], r"study.objective must be 'module:function'"),
    (["study.objective=no_such_module_x:f"], r"cannot import objective 'no_such_module_x:f'"),
    (["study.space.x.low=10"], r"study.space.x: low must be <= high"),
    (["study.space.x.type=gaussian"], r"study.space.x.type must be one of"),
    (["study.space.family.choices=[]"], r"study.space.family.choices must be a non-empty list"),
    (["study.space.width.log=true", "study.space.width.low=0"], r"log scale needs low > 0"),
    (["memory.margin_frac=1.5"], r"memory.margin_frac must be in \[0, 1\), got 1.5"),
    (["memory.ram_margin_frac=-0.1"], r"memory.ram_margin_frac must be in \[0, 1\)"),
    (["memory.quantile=0.2"], r"memory.quantile must be in \[0.5, 1\]"),
    (["memory.max_waiting=0"], r"memory.max_waiting must be >= 1, got 0"),
    (["memory.capacity_gib=-1"], r"memory.capacity_gib must be > 0, got -1"),
    (["faults.retry_on=[oom]"], r"faults.retry_on may hold worker_died, cuda_error, timeout"),
    (["faults.grace_period_s=5"], r"faults.grace_period_s must exceed"),
    (["faults.max_retries=-1"], r"faults.max_retries must be >= 0, got -1"),
    (["max_failures_in_a_row=0"], r"max_failures_in_a_row must be >= 1, got 0"),
    (["+foo=1"], r"unknown key 'foo' in '\+foo=1'"),
    (["+study.n_trial=3"], r"unknown key 'study.n_trial'"),
    (["study.n_trial=3"], r"Key 'n_trial' not in"),
    (["study.loader.num_workers=-1"], r"study.loader.num_workers must be >= 0, got -1"),
    (["study.memory.scaling=[nope]"], r"study.memory names param 'nope' that is not in"),
    (["storage.url=notaurl"], r"storage.url is not a valid SQLAlchemy URL"),
    (["pruner.reduction_factor=1"], r"^pruner: "),
    (["study.epochs=abc"], r"study.epochs"),
]


@pytest.mark.parametrize(
    ("typed", "message"), TUNE_MISTAKES, ids=[" ".join(t) for t, _ in TUNE_MISTAKES]
)
def test_tune_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], typed: list[str], message: str
) -> None:
    storage = tmp_path / "studies"
    argv = ["tune", "--config-dir", str(CONF), *TOY, f"storage.dir={storage}", *typed]
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("hpo: error: "), err
    assert re.search(message, lines[0].removeprefix("hpo: error: ")), lines[0]
    assert not storage.exists(), "a mistake must write nothing"


def test_a_storage_dir_that_is_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("")
    argv = ["tune", "--config-dir", str(CONF), *TOY, f"storage.dir={tmp_path / 'afile'}"]
    assert main(argv) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


LOOK_MISTAKES: list[tuple[list[str], str]] = [
    (["stats", "--group-by", "a,b,c"], r"--group-by takes one or two parameter names"),
    (["stats", "--group-by", "nope"], r"--group-by 'nope' is not a parameter of the study"),
    (["stats", "--vram-threshold-mib", "-1"], r"--vram-threshold-mib must be >= 0"),
    (["status", "--interval", "0"], r"--interval must be > 0"),
    (["dashboard", "--port", "70000"], r"--port must be in 0..65535"),
    (["report", "--budget-mib", "-5"], r"--budget-mib must be > 0"),
    (["report", "--memory-param", "nope"], r"--memory-param 'nope' is not a parameter"),
    (["stats"], r"does not exist"),  # no study database yet
]


@pytest.mark.parametrize(
    ("typed", "message"), LOOK_MISTAKES, ids=[" ".join(t) for t, _ in LOOK_MISTAKES]
)
def test_look_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], typed: list[str], message: str
) -> None:
    storage = tmp_path / "studies"
    command, *flags = typed
    argv = [command, *flags, "--config-dir", str(CONF), *TOY, f"storage.dir={storage}"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not storage.exists()
