"""Market data: bundled real datasets and the user's files, two timeframes, tokenisation into model inputs
(from dualhrq.features, the one feature path that training and serving share), and labels.

    sources.load_dataset(name or path) -> Dataset        bars.py      Bars (t = bar close time, ns UTC)
    resample.resample(fine, rule) -> coarse Bars          labels.py    out_a, out_b, action, quantity targets
    windows.build_dataset(...) -> WindowDataset (train)
    windows.SampleBuilder(...)(coarse, fine) -> Sample (one request; dualhrq.inputs drives it at serve time)
"""
