"""Every ``opencir`` subcommand is registered and answers ``--help``."""

from __future__ import annotations

import pytest

from opencir.cli import COMMAND_MODULES, main


@pytest.mark.parametrize("command", COMMAND_MODULES)
def test_every_subcommand_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"opencir {command}" in capsys.readouterr().out
