"""The CLI's logging set-up: the suite's log records reach the user's stderr as bare messages,
at the level $BENCH_LOG_LEVEL names (INFO by default)."""

import logging

import click
import pytest
from click.testing import CliRunner

from medad_bench.cli import LOGGED_PACKAGES, cli, configure_logging
from medad_bench.errors import UsageError


@pytest.fixture(autouse=True)
def restore_loggers():
    saved = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers))
             for name in LOGGED_PACKAGES}
    yield
    for name, (level, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers


@pytest.fixture
def logging_command(monkeypatch):
    """A throwaway `bench` command that logs as library code does."""

    @click.command()
    def emit() -> None:
        logging.getLogger("medad_bench.somewhere").info("note (card): an info line")
        logging.getLogger("medad_bench.methods.something").warning("WARNING m: a warning line")
        logging.getLogger("medad_bench.somewhere").debug("a debug line")

    monkeypatch.setitem(cli.commands, "emit-logs", emit)
    return "emit-logs"


def test_cli_shows_info_and_warnings_on_stderr(logging_command, monkeypatch):
    monkeypatch.delenv("BENCH_LOG_LEVEL", raising=False)
    result = CliRunner().invoke(cli, [logging_command], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "note (card): an info line\n" in result.stderr
    assert "WARNING m: a warning line\n" in result.stderr
    assert "a debug line" not in result.output
    assert result.stdout == ""


def test_second_invocation_adds_no_second_handler(logging_command):
    for _ in range(3):
        result = CliRunner().invoke(cli, [logging_command], catch_exceptions=False)
    assert result.stderr.count("an info line") == 1


@pytest.mark.parametrize("level, shown", [("DEBUG", 3), ("warning", 1), ("ERROR", 0)])
def test_bench_log_level(logging_command, monkeypatch, level, shown):
    monkeypatch.setenv("BENCH_LOG_LEVEL", level)
    result = CliRunner().invoke(cli, [logging_command], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(result.stderr.splitlines()) == shown


def test_bad_log_level_is_a_clear_error(logging_command, monkeypatch):
    monkeypatch.setenv("BENCH_LOG_LEVEL", "LOUD")
    result = CliRunner().invoke(cli, [logging_command])
    assert result.exit_code == 2
    assert "BENCH_LOG_LEVEL='LOUD' is not a log level" in result.output
    with pytest.raises(UsageError):
        configure_logging()


def test_records_reach_capsys_and_caplog(capsys, caplog, monkeypatch):
    monkeypatch.delenv("BENCH_LOG_LEVEL", raising=False)
    configure_logging()
    with caplog.at_level(logging.INFO, logger="medad_bench"):
        logging.getLogger("medad_bench.data").info("a note")
    assert capsys.readouterr().err == "a note\n"
    assert [r.getMessage() for r in caplog.records] == ["a note"]
