"""The catalogue: what xmodal knows besides the vectors' indexes, in SQLite: the schema and
its migrations, item rows, the typed index of metadata keys that filters read, the full-text
tables of lexical search, and job records. A second catalogue is a sibling folder."""
