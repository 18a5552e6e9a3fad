"""optsearch's one cache folder, and who uses it."""

from __future__ import annotations

from pathlib import Path


def test_the_cache_folder_follows_optsearch_cache_then_xdg_then_home(tmp_path, monkeypatch):
    from optsearch.cache import cache_dir
    from optsearch.trainers.data import cache_paths

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPTSEARCH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "optsearch"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "optsearch"
    monkeypatch.setenv("OPTSEARCH_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    # decoded CIFAR-10 without a writable place beside it goes to cifar10/ there
    archive = tmp_path / "data" / "c.tar"
    assert cache_paths(archive, "k")[-1].parent == Path(tmp_path / "mine" / "cifar10")
