"""Stage 9 — studies: the research tooling, kept apart from the library a user imports.

Hyperparameter search (:mod:`.tune`), the multi-seed final protocol (:mod:`.final`), the
cross-generator protocol (:mod:`.crossgen`), the offline benchmark builder (:mod:`.offline_bench`)
and the demo (:mod:`.demo`). It may import every stage below it; nothing in the library imports it
(only the CLI, lazily, when one of its commands runs).
"""
