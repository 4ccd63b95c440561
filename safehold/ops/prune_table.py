"""Prune's view of the index: every entry of every index file, duplicates included, in flat
numpy arrays sorted by blob id, plus one mark per entry.

49 bytes per entry (32-byte id, pack number, offset, lengths, type) and one byte of mark, with
no Python object per blob: the same budget as the repository's own Index (docs/format.md,
"Index in memory"). Unlike Index.lookup, every copy of a blob is visible, because prune must
choose which copy to keep.
"""

from __future__ import annotations

import numpy as np

from safehold.archive.entries import decode_tree
from safehold.errors import IntegrityError
from safehold.repo.index import Location
from safehold.repo.index_arrays import LOCATION_FIELDS
from safehold.repo.repository import Repository, pack_name
from safehold.store import ObjectMissing

# Sortable ids (S32: compared as bytes), the record's other fields as in an index file.
ENTRY_DTYPE = np.dtype([("id", "S32"), *LOCATION_FIELDS], align=False)
assert ENTRY_DTYPE.itemsize == 49  # the layout of an index file record (INDEX_RECORD)


class BlobTable:
    """All index entries of a repository; load with ``BlobTable.load``."""

    def __init__(self, index_names: list[str], packs: list[bytes], table: np.ndarray) -> None:
        # Each column taken from the unsorted table in sorted order, one at a time: the
        # table, the order and one column more at the peak (not two whole tables).
        order = np.argsort(table["id"], kind="stable")
        self.index_names = index_names
        self.packs = packs  # global pack number -> pack id
        self.ids = table["id"][order]
        self.pack = table["pack"][order]
        self.offset = table["offset"][order]
        self.length = table["length"][order]
        self.raw = table["raw"][order]
        self.type = table["type"][order]
        self.used = np.zeros(len(self.ids), dtype=bool)

    @classmethod
    def load(cls, repository: Repository) -> BlobTable:
        """Read every index file. Raises IntegrityError if one is damaged (it does not
        authenticate, or is no index file: ``Repository.load_index_file``): prune must see
        the whole index, or it could take a listed blob for an unlisted one."""
        names = repository.index_names()
        numbers: dict[bytes, int] = {}  # pack id -> global number, in order of first sight
        parts = []
        for name in names:
            try:
                content = repository.load_index_file(name)
            except IntegrityError as error:
                raise IntegrityError(
                    f"{error.fields['message']}; prune changed nothing: run 'safehold repair index'"
                ) from None
            local = np.array(
                [numbers.setdefault(p, len(numbers)) for p in content["packs"]] or [0],
                dtype="<u4",
            )
            part = np.frombuffer(content["records"], dtype=ENTRY_DTYPE).copy()
            del content
            part["pack"] = local[part["pack"]]
            parts.append(part)
        table = np.concatenate(parts) if parts else np.empty(0, dtype=ENTRY_DTYPE)
        del parts
        packs = list(numbers)
        del numbers
        return cls(names, packs, table)

    def __len__(self) -> int:
        return len(self.ids)

    def span(self, blob_id: bytes) -> tuple[int, int]:
        """Positions [start, end) of the entries of a blob (empty if it is not indexed)."""
        key = np.bytes_(blob_id)
        return (
            int(np.searchsorted(self.ids, key, "left")),
            int(np.searchsorted(self.ids, key, "right")),
        )

    def mark(self, blob_ids: list[bytes]) -> list[bytes]:
        """Mark every copy of the given blobs as needed; returns the ids that are not indexed."""
        if not blob_ids:
            return []
        keys = np.array(blob_ids, dtype="S32")
        starts = np.searchsorted(self.ids, keys, "left")
        ends = np.searchsorted(self.ids, keys, "right")
        found = ends > starts
        self.used[starts[found]] = True
        for start, end in zip(starts[found], ends[found], strict=True):
            if end - start > 1:  # duplicates are rare: a slow path is fine
                self.used[start:end] = True
        return [blob_ids[i] for i in np.flatnonzero(~found)]

    def marked(self, blob_ids: list[bytes]) -> list[bool]:
        """For each id: True if it is indexed and marked as needed (``mark``)."""
        if not blob_ids:
            return []
        keys = np.array(blob_ids, dtype="S32")
        starts = np.searchsorted(self.ids, keys, "left")
        found = starts < len(self.ids)
        found[found] = self.ids[starts[found]] == keys[found]
        needed = np.zeros(len(keys), dtype=bool)
        needed[found] = self.used[starts[found]]
        return needed.tolist()

    def location(self, position: int) -> Location:
        return Location(
            self.packs[int(self.pack[position])],
            int(self.offset[position]),
            int(self.length[position]),
            int(self.raw[position]),
            int(self.type[position]),
        )

    def load_tree(self, repository: Repository, tree_id: bytes) -> list[dict]:
        """The entries of a tree blob, from the first of its copies that reads and verifies."""
        start, end = self.span(tree_id)
        if start == end:
            raise IntegrityError(f"tree {tree_id.hex()[:16]} is not in the index")
        problem = ""
        for position in range(start, end):
            location = self.location(position)
            try:
                sealed = repository.store.load(
                    pack_name(location.pack_id), location.offset, location.length
                )
                return decode_tree(repository.open_blob(tree_id, location, sealed))
            except ObjectMissing:
                problem = f"pack {location.pack_id.hex()[:16]} is missing"
            except IntegrityError as error:
                problem = str(error.fields["message"])
        raise IntegrityError(f"tree {tree_id.hex()[:16]}: {problem}")


class TreeMarks:
    """The walk's memory of visited trees, kept in the table's marks (no set of ids)."""

    def __init__(self, table: BlobTable) -> None:
        self.table = table

    def __contains__(self, tree_id: object) -> bool:
        assert isinstance(tree_id, bytes)
        start, end = self.table.span(tree_id)
        return start < end and bool(self.table.used[start])

    def add(self, tree_id: bytes) -> None:
        self.table.mark([tree_id])
