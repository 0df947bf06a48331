"""Drip's class images cached at aug_size: the same bytes for any worker count, resumable, bad images named."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from embedlab.data.image_cache import cache_source
from embedlab.images import BadImageError, list_images, read_image_bytes


def _store_bytes(folder):
    return {p.name: (folder / p.name).read_bytes() for p in sorted(folder.glob("shard-*"))}


def test_the_cache_holds_every_source_image_at_the_size_and_any_worker_count_writes_the_same_bytes(tmp_path,
                                                                                                  tiny_demo):
    source = tiny_demo / "disc" / "training"
    one = cache_source(source, tmp_path / "one", size=40, workers=1, shard_size=8)
    two = cache_source(source, tmp_path / "two", size=40, workers=2, shard_size=8)
    names = [p.name for p in list_images(source)]
    assert one["cached"] == two["cached"] == len(names) and one["skipped"] == []
    assert [p.name for p in list_images(tmp_path / "one")] == names
    assert _store_bytes(tmp_path / "one") == _store_bytes(tmp_path / "two")
    with Image.open(io.BytesIO(read_image_bytes(list_images(tmp_path / "one")[0]))) as img:
        assert img.size == (40, 40)
    # Built already: nothing is written again.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one").iterdir()}
    cache_source(source, tmp_path / "one", size=40)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one").iterdir()} == before
    # Another size is another cache: the folder is rebuilt, not mixed.
    assert cache_source(source, tmp_path / "one", size=24)["size"] == 24


def test_a_bad_image_is_named_or_skipped_and_a_killed_build_resumes_after_its_last_shard(tmp_path, tiny_demo):
    source = tmp_path / "training"
    shutil.copytree(tiny_demo / "disc" / "training", source)
    broken = list_images(source)[4]
    broken.write_bytes(broken.read_bytes()[:300])
    with pytest.raises(BadImageError, match=rf"{broken.name}: truncated or corrupt"):
        cache_source(source, tmp_path / "failed", size=32, on_bad_image="fail")

    whole = cache_source(source, tmp_path / "whole", size=32, on_bad_image="skip", shard_size=5)
    assert whole["skipped"] == [broken.stem] and broken.name not in {p.name for p in list_images(tmp_path / "whole")}
    # Killed after two shards: the rest and the index are missing, the build marker is there.
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "whole", killed)
    for path in killed.iterdir():
        if path.name not in ("shard-000000.tar", "shard-000000.keys.npy", "shard-000001.tar",
                             "shard-000001.keys.npy"):
            path.unlink()
    (killed / ".building").write_text(repr({"source": str(source), "images": len(list_images(source)),
                                            "size": 32, "quality": 95}))
    resumed = cache_source(source, killed, size=32, on_bad_image="skip", shard_size=5)
    assert resumed["cached"] == whole["cached"] and resumed["skipped"] == [broken.stem]
    assert _store_bytes(killed) == _store_bytes(tmp_path / "whole")
    # Built with skip, asked again with fail: the left-out image is named.
    with pytest.raises(BadImageError, match=rf"{broken.name}: truncated or corrupt"):
        cache_source(source, tmp_path / "whole", size=32, on_bad_image="fail", shard_size=5)


def _build(args):
    source, out = args
    return cache_source(source, out, size=40, shard_size=8)["cached"]


def test_two_runs_that_need_the_same_cache_build_it_once_and_both_get_it(tmp_path, tiny_demo):
    import multiprocessing

    source = tiny_demo / "disc" / "training"
    with multiprocessing.get_context("fork").Pool(2) as pool:  # two sweep workers starting drip at once
        counts = pool.map(_build, [(source, tmp_path / "shared")] * 2)
    assert counts == [len(list_images(source))] * 2
    cache_source(source, tmp_path / "alone", size=40, shard_size=8)
    assert _store_bytes(tmp_path / "shared") == _store_bytes(tmp_path / "alone")
