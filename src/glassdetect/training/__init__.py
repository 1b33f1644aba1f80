"""Stage 6 — training: one run of GLASS or the baseline, step by step.

The options (:mod:`.config`), the split, training set and validation pass (:mod:`.data`), the loop
(:mod:`.train`) and the DistributedDataParallel plumbing (:mod:`.distributed`). It may import
views, data, models, the pipeline, evaluation and the top-level helpers; never inference, the
service, bench, studies or the CLI.
"""
