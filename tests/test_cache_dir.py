"""Where the tiny models are cached: $MUSICSTEER_CACHE, else the platform's user cache folder."""

from __future__ import annotations

import sys
from pathlib import Path

import platformdirs

from musicsteer.engine.tiny import cache_dir


def test_cache_dir_is_the_platform_user_cache_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("MUSICSTEER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == Path(platformdirs.user_cache_dir("musicsteer"))
    if sys.platform.startswith("linux"):  # where XDG applies, it is honoured
        assert cache_dir() == tmp_path / "xdg" / "musicsteer"


def test_musicsteer_cache_wins(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("MUSICSTEER_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
