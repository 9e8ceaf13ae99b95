"""Market data: bundled real datasets and the user's files, two timeframes, tokenisation into model inputs
(from dualhrq.features, the one feature path that training and serving share), and labels.

    sources.load_dataset(name or path) -> Dataset        bars.py      Bars (t = bar close time, ns UTC)
    resample.resample(fine, rule) -> coarse Bars          labels.py    outA, outB, action, quantity targets
    windows.build_dataset(...) -> WindowDataset (train)
    windows.build_sample(coarse, fine, stats, model_cfg, position) -> Sample (one request at serve time)
"""
