"""What the gateway and results servers do, without gRPC (KServe's "data plane").

The servicers in gateway/ and results/ only translate protobuf to these calls and back; domain
errors (memscore.errors) become status codes in one interceptor (`interceptors.py`). Nothing here
imports torch: scores come from parquet files or, for running jobs, from traces merged with
numpy (`anytime.py`); only QueryInfluence loads the engine's model code, when it is called.

    jobs.py      ScoringPlane: submit (validate everything first), get, list, watch, cancel,
                 extend, resume
    uploads.py   Upload: spool, validate and store an uploaded dataset or corpus
    watch.py     ChangeFeed: job changes for every WatchJob from one polling thread
    anytime.py   AnytimeEstimates: scores of a running job from the shards done so far
    results.py   ResultsPlane: ranked examples, influence pairs, artifacts, exposure
    watchdog.py  Watchdog: queues again the lost work of unfinished jobs (stopped heartbeats)
"""

from .anytime import AnytimeEstimates
from .jobs import KINDS, MAX_PAGE, ScoringPlane
from .results import ResultsPlane

__all__ = ["AnytimeEstimates", "KINDS", "MAX_PAGE", "ResultsPlane", "ScoringPlane"]
