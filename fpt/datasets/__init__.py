"""File readers and data-location helpers for the real-data tasks (fpt/tasks/images.py, listops.py,
homology.py, custom/). Nothing here knows about models."""
from fpt.datasets.io import (check_digest, data_root, dataset_dir, download, file_digest, find_first,
                             load_cached, save_cached)
from fpt.datasets.readers import (check_labels, parse_int_labels, read_cifar_batches, read_idx, read_lmdb,
                                  read_table)

__all__ = ["check_digest", "data_root", "dataset_dir", "download", "file_digest", "find_first", "load_cached",
           "save_cached", "check_labels", "parse_int_labels", "read_cifar_batches", "read_idx", "read_lmdb",
           "read_table"]
