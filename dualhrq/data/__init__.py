"""Market data: bundled real datasets and the user's files, two timeframes, the ONE feature path that
training and serving share, tokenisation into model inputs, and labels.

    sources.load_dataset(name or path) -> Dataset        bars.py      Bars (t = bar close time, ns UTC)
    resample.resample(fine, rule) -> coarse Bars          features.py  bar / regime / pattern / position-state
    windows.build_dataset(...) -> WindowDataset (train)                features, FeatureStats, PositionRule
    windows.build_sample(coarse, fine, stats, model_cfg, position) -> Sample (one request at serve time)
                                                          labels.py    outA, outB, action, quantity targets
"""
