"""An index on disk: generations (FAISS + SQLite + manifest), sharded IVF, incremental updates, the
words table, filters as SQL, the build lock and gc; one generation as a search loads it."""
