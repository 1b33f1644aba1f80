"""Stage 6 — inference: a trained checkpoint put to use.

The Python API (:mod:`.api`, ``Detector``), batch prediction (:mod:`.predict`), resumable sharded
scans and their merge (:mod:`.shards`), the Ray Data engine (:mod:`.ray_engine`), evidence maps
(:mod:`.explain`) and ONNX export (:mod:`.export`). It may import views, data, models, the
pipeline, evaluation and the top-level helpers; never training, the service or anything above.
"""
