"""Benchmark harness: one timing convention, reports (JSON + PNG + markdown), and the study registry.

Timing convention (everywhere): threads fixed and reported, ``warmup`` untimed calls, then the median
wall time of ``repeats`` calls of the whole batch; speed is reported as a ratio against a baseline
timed in the same process.
"""

from .registry import find_studies, run_study
from .report import Report, markdown_table
from .seeding import generator, seed_all
from .timing import Timing, conditions, parse_args, set_threads, time_call, time_to_epsilon

__all__ = [
    "Timing",
    "time_call",
    "time_to_epsilon",
    "set_threads",
    "conditions",
    "parse_args",
    "Report",
    "markdown_table",
    "seed_all",
    "generator",
    "find_studies",
    "run_study",
]
