"""`gameday` and `check` must never go green on something they could not look at."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT, run, shop


def test_gameday_that_could_not_play_exits_1_and_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "safe-mcp.toml"
    cfg.write_text((ROOT / "config" / "demo.toml").read_text())  # shop.db is not there
    r = run("gameday", "--config", str(cfg))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NOT PLAYED" in r.stdout and "INCOMPLETE" in r.stdout
    assert "contained" not in r.stdout, "a scenario that was not played is never reported as contained"
    assert "does not exist" in r.stdout, "the row says why it could not be played"
    assert not (tmp_path / "shop.db").exists(), "gameday creates nothing in the user's folder"


def test_gameday_half_played_still_fails(tmp_path: Path) -> None:
    cfg = shop(tmp_path, '\n[targets.gone]\nkind = "sqlite"\npath = "gone.db"\naccess = "read-write"\n')
    r = run("gameday", "--config", str(cfg))
    assert r.returncode == 1, r.stdout
    played = [x for x in r.stdout.splitlines() if x.startswith(("DROP TABLE", "bulk DELETE")) and " shop " in x]
    assert played and all(" pass " in x for x in played), r.stdout
    assert any(x.startswith("SQL scenarios") and "gone" in x and "NOT PLAYED" in x for x in r.stdout.splitlines())


def test_gameday_rows_are_whole_words_and_fit_a_terminal(tmp_path: Path) -> None:
    from safe_mcp.faces.cli_views import render_gameday as render
    from safe_mcp.gate.gameday import run_gameday
    from safe_mcp.trust.config import load_config

    rows = run_gameday(load_config(shop(tmp_path)))
    text = render(rows, width=100)
    assert all(len(line) <= 100 for line in text.splitlines()), text
    words = {w for r in rows for w in (r.happened + " " + r.expected).split()}
    assert words <= set(text.split()), "no word is cut: every word of every row appears whole"
    plain = render(rows)
    assert len(plain.splitlines()) == len(rows) + 2 + 2, "piped: one line per row, a header, a rule and the verdict"


def test_check_exits_1_when_a_target_cannot_be_reached_and_says_so_quickly(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "safe-mcp.toml"
    cfg.write_text(f'[targets.pg]\nkind = "postgres"\ndsn = "postgresql://nobody@127.0.0.1:{port}/test"\n')
    started = time.monotonic()
    r = run("check", "--config", str(cfg), timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "auditing target pg (postgres) ... could not connect" in r.stderr, "progress per target on stderr"
    assert "check failed: target pg: could not connect" in r.stderr
    assert "Traceback" not in r.stderr and "WARNING" not in r.stderr, r.stderr
    assert "could not connect" in r.stdout, "the report itself says it too"
    offline = run("check", "--offline", "--config", str(cfg))
    assert offline.returncode == 0, "--offline judges the config, which is valid"
    print(f"refused connection reported in {time.monotonic() - started:.1f} s")


def test_check_reports_a_missing_sqlite_file(tmp_path: Path) -> None:
    cfg = tmp_path / "safe-mcp.toml"
    cfg.write_text('[targets.db]\nkind = "sqlite"\npath = "nope.db"\n')
    r = run("check", "--config", str(cfg))
    assert r.returncode == 1
    assert f"the database file {tmp_path / 'nope.db'} does not exist" in r.stdout + r.stderr
    assert not (tmp_path / "nope.db").exists()
    offline = run("check", "--offline", "--config", str(cfg))
    assert offline.returncode == 0 and "does not exist" in offline.stderr
    (tmp_path / "nope.db").touch()
    assert run("check", "--config", str(cfg)).returncode == 0


def test_a_closed_pipe_ends_every_command_quietly(tmp_path: Path) -> None:
    """`safe-mcp check | head`: the reader goes away; no traceback, whatever the command."""
    cfg = shop(tmp_path)
    for args in (["check", "--offline"], ["config-schema"], ["receipts", "list"], ["pending"], ["gameday"],
                 ["client-config", "cursor"]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first byte
        try:
            r = subprocess.run([sys.executable, "-m", "safe_mcp", *args, "--config", str(cfg)]
                               if args[0] != "config-schema" else [sys.executable, "-m", "safe_mcp", *args],
                               stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
        finally:
            os.close(write)
        assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, (args, r.stderr)
        assert r.returncode in (0, 1, 141), (args, r.returncode)
