"""PathTable: the path list DataLoader datasets hold, as numpy buffers (worker memory flat in the data size)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from embedlab.data.labelled import LabelledImages
from embedlab.data.path_table import PathTable, path_table


def test_a_table_gives_back_the_paths_it_was_given_in_order_and_by_slice():
    paths = [Path("data/raw/disc21/training/T0000001.jpg"), Path("/abs/été/b.png"), Path("x"),
             Path(os.fsdecode(b"odd-\xff-bytes.jpg"))]  # a name that is not UTF-8, as os.listdir returns it
    table = PathTable(paths)
    assert len(table) == 4 and list(table) == paths
    assert table[-1] == paths[-1] and table[1] == Path("/abs/été/b.png")
    assert list(table[1:3]) == paths[1:3] and list(table[::2]) == paths[::2] and len(table[3:1]) == 0
    assert table == paths and table[1:] == PathTable(paths[1:])
    assert path_table(table) is table
    with pytest.raises(IndexError, match="out of range for 4 paths"):
        table[4]
    # Picking rows (a split of a photo list) keeps each path whole, in the order asked for.
    assert list(table.take(np.array([3, 0, 0, 2]))) == [paths[3], paths[0], paths[0], paths[2]]
    assert len(table.take(np.array([], np.int64))) == 0
    with pytest.raises(IndexError, match="out of range for 4 paths"):
        table.take(np.array([1, 4]))


def test_labelled_images_read_through_workers_give_each_file_with_its_label(tmp_path, tiny_demo):
    photos = sorted((tiny_demo / "disc" / "query").glob("*.jpg"))[:6]
    data = LabelledImages([(p, i * 10) for i, p in enumerate(photos)], 16)
    assert isinstance(data.paths, PathTable) and list(data.paths) == photos
    loader = DataLoader(data, batch_size=2, num_workers=2)
    labels = torch.cat([y for _, y in loader]).tolist()
    assert labels == [0, 10, 20, 30, 40, 50]
