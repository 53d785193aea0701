"""Interaction logs -> prepared datasets.

  errors.py     DataError (file:line: field 'x': message) and ErrorPolicy
                ('raise' | 'skip', skips counted by reason)
  dataset.py    RecDataset (columnar catalogue + interactions) and the
                DatasetBuilder every loader uses
  loaders/      one module per source; `loaders.load(source, path, ...)`
  synthetic.py  the embedded, seeded synthetic shop with planted signal
  prepare.py    build_prepared: load -> dedup -> k-core -> chronological,
                re-indexed PreparedData (prepared.py); split.py derives
                leave-one-out splits from it
"""
