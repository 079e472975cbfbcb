"""Where the real-data fixtures live: all inside the repository (see ``fixtures/README.md``).

``BLOCKCHAIR_DIR`` holds both days' Blockchair dump excerpts; the 13 Aug files are symbolic links
to the package's bundled sample (the same bytes, stored once).
"""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BLOCKCHAIR_DIR = FIXTURES / "blockchair"
DUMP_13 = BLOCKCHAIR_DIR / "blockchair_bitcoin_transactions_20250813_blocks909766-909785.tsv.gz"
DUMP_14 = BLOCKCHAIR_DIR / "blockchair_bitcoin_transactions_20250814_blocks909922-909932.tsv.gz"
BLOCKS_13 = BLOCKCHAIR_DIR / "blockchair_bitcoin_blocks_20250813.tsv.gz"
BLOCKS_14 = BLOCKCHAIR_DIR / "blockchair_bitcoin_blocks_20250814.tsv.gz"
DUMPLINGS_VALUES = FIXTURES / "dumplings" / "coinjoin_values.tsv.gz"
SEED_RUN_DIR = FIXTURES / "seed_run"
