"""Stage 5 — evaluation: how good a checkpoint is, and how sure it may be.

The metrics (:mod:`.metrics`) and their plots (:mod:`.curves`), evaluating a checkpoint on a split
(:mod:`.evaluate`), temperature and threshold fitting (:mod:`.calibrate`), degradation sweeps
(:mod:`.robustness`, :mod:`.robustness_report`) and mean ± std over seeds (:mod:`.report`). It may
import views, data, models, the pipeline and the top-level helpers; never training, inference,
the service or anything above.
"""
