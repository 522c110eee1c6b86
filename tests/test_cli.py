"""The `pe` command line: every subcommand documents itself, and errors say what to do."""

from __future__ import annotations

import pytest

from personalization.cli import build_parser, main

SUBCOMMANDS = ("generate", "run", "stage", "summary", "show-user", "versions", "rollback", "config", "airflow-env",
               "delete-user", "verify-deleted", "export-user", "retention")


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage: pe " + name in capsys.readouterr().out


def test_summary_without_a_world_says_what_to_do(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PE_ROOT", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["summary"])
    assert "run `pe generate` first" in str(exit_info.value.code)


def test_show_user_rejects_hostile_ids(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PE_ROOT", str(tmp_path))
    assert main(["show-user", "../../etc/passwd"]) == 2
    assert "contains characters" in capsys.readouterr().err
    assert not (tmp_path / "var").exists()


def test_parser_rejects_unknown_stage() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stage", "drop_everything"])


def test_delete_user_rejects_hostile_ids_before_touching_anything(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PE_ROOT", str(tmp_path))
    assert main(["delete-user", "1; DROP TABLE recommendations", "--requested-by", "dpo"]) == 2
    assert "contains characters" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
