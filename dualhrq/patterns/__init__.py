"""Regimes, the fixed pattern encoder, the hnswlib pattern library and retrieval that fails open.

- regimes.py    k-means market regimes (the regime classifier's targets) and their summary table
- encoder.py    PatternEncoder: pattern features -> embeddings (standardise + PCA, fitted once)
- library.py    PatternLibrary: time-filtered k-NN over past windows (exact up to 4,096 rows, else hnswlib),
                lifecycle, save/load, model context
- rows.py       PatternRows: the library's per-entry fields, slot reuse and labels, meta.npz
- retriever.py  Retriever: retrieval of fixed cost on the caller's thread, else on a bounded pool with a hard
                deadline; fails open with a reason
- context.py    the same context for training/validation (no deadline) and pattern dropout
- build.py      building all three from a dataset's training window; artifacts.py saves/loads them together
- recall.py     recall@k and latency of the index on real-data embeddings (`dualhrq bench index`)
- commands.py   `dualhrq index build`, `dualhrq regimes`, and the `bench index` arguments
"""
