"""Every ``opencir`` subcommand is registered and answers ``--help``."""

from __future__ import annotations

import logging

import pytest

from opencir.cli import COMMAND_MODULES, main


@pytest.mark.parametrize("command", COMMAND_MODULES)
def test_every_subcommand_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"opencir {command}" in out
    assert "%%" not in out  # a doubled percent sign means a help text escaped it needlessly


def test_faiss_loader_info_stays_out_of_the_log_unless_verbose(caplog, capsys) -> None:
    caplog.set_level(logging.INFO)
    for argv, shown in ((["models"], False), (["-v", "models"], True)):
        assert main(argv) == 0
        caplog.clear()
        logging.getLogger("faiss.loader").info("Loading faiss with AVX2 support.")
        assert ("AVX2" in caplog.text) == shown
