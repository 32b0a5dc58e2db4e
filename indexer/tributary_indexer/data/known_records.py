"""Which records an index already holds, so ``tributary index add`` skips them.

A record with an ``id`` is known when an indexed record had the same id; a record without one
when an indexed record without an id had the same training content (its content hash). Records
repeated within the added corpus count too (the later copy is skipped). Adding the same file
twice therefore adds nothing the second time, and says so. An id already indexed with *other*
content is skipped as well and counted apart ("changed"): replacing a record is a removal and an
add, never a silent second copy.

Records removed from the index (tombstoned, not yet compacted away) are not known: adding one
again adds it back. Membership is kept as 64-bit hashes (about 100 bytes per indexed record in
memory); only rows below the manifest's example count are read, so a resumed ``add`` whose store
already holds its new rows does not mistake them for old ones.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable

from .corpus import CorpusRecord
from .corpus_check import id_hash
from .example_store import ExampleStore

logger = logging.getLogger(__name__)

__all__ = ["KnownRecords"]


class KnownRecords:
    """The indexed records' ids and contents; :meth:`fresh` gives one pass's filter."""

    def __init__(self, ids: dict[int, int], contents: set[int]) -> None:
        self._ids = ids  # id hash -> content hash
        self._contents = contents  # content hashes of records without an id
        self.skipped = 0
        """Records skipped as already indexed (this pass)."""
        self.changed = 0
        """Of those, records whose id is indexed with other content."""

    @classmethod
    def of_store(
        cls, store: ExampleStore, n_examples: int, removed: Container[int] = ()
    ) -> KnownRecords:
        """The first ``n_examples`` rows of ``store`` (the manifest's count), but the ``removed``
        ids (tombstones)."""
        ids: dict[int, int] = {}
        contents: set[int] = set()
        for example_id, external_id, content_hash in store.iter_identities(n_examples):
            if example_id in removed:  # taken down: adding the record again adds it back
                continue
            if external_id is not None:
                ids[id_hash(external_id)] = id_hash(content_hash)
            else:
                contents.add(id_hash(content_hash))
        logger.info(
            "index holds %d records with an id and %d distinct contents without",
            len(ids),
            len(contents),
        )
        return cls(ids, contents)

    def fresh(self) -> KnownRecords:
        """A filter for one pass over the added corpus (it learns that corpus's records as it
        goes)."""
        return KnownRecords(dict(self._ids), set(self._contents))

    def seen(self, record: CorpusRecord) -> bool:
        """True when ``record`` is already indexed (or came earlier in this pass): skip it."""
        content = id_hash(record.content_hash)
        if record.id is not None:
            key = id_hash(record.id)
            if key in self._ids:
                self.skipped += 1
                self.changed += self._ids[key] != content
                return True
            self._ids[key] = content
            return False
        if content in self._contents:
            self.skipped += 1
            return True
        self._contents.add(content)
        return False

    def count_new(self, records: Iterable[CorpusRecord]) -> int:
        """How many of ``records`` a pass would add (this filter's counters are updated)."""
        return sum(not self.seen(r) for r in records)
