"""The run process's long-lived heap, kept out of Python's full collections.

Once a model has loaded, the process holds some 800,000 objects that live as long as it does (torch,
transformers, Prefect, pydantic, the model's modules). A full collection scans every one of them
while holding the GIL: 0.72-0.78 s on the reference machine (docs/BENCHMARKS.md), during which no
request thread sends or reads and no batch is handed to the GPU. One or two came in each run of
1,024 requests against the served stand-in, and the runs they fell in lost about 0.1 of the
server's capacity (0.82 against 0.92). `settle` collects what is garbage now, then moves what is
left into the permanent generation (`gc.freeze`), so later collections scan only what the run
allocates: the first settle of a process pays one full collection, later ones only what is new.
`collect` brings the settled objects back for a collection that must really free memory (a released
VLM's reference cycles), then settles again.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Exclude every object alive now from future collections: call it after a model loads."""
    gc.collect()  # garbage is freed first: a settled object is only ever freed by `collect`
    gc.freeze()


def collect() -> None:
    """A full collection that also reaches settled objects (whatever was released since), after
    which the survivors are settled again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
