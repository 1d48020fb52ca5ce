"""Python's cyclic garbage collector, set for a long-running controller.

Why: the controller allocates many short-lived containers per reconcile (decoded answers, patches,
condition lists), and with CPython's default first threshold (700 net allocations) the collector runs
some 140 times a second under load, each time walking the youngest generation, and every tenth or
hundredth time the older ones, which hold every module, class and function imported at start-up. In the
convergence benchmark (n = 10,000) that was about 4 % of the service's CPU (1.25 s: 1,437 young, 130
middle, 11 full collections); with the settings below 0.36 s (70, 6, 0) and the run some 5 % cheaper,
with the same peak RSS. See docs/performance.md.

- ``gc.freeze()`` after start-up's imports moves what they made into a permanent generation the
  collector never walks again (they live as long as the process anyway); a collection first, so that no
  garbage of start-up is kept with them.
- The first threshold 10,000 instead of 700: young collections are fourteen times rarer and find as
  much. Almost all of the service's garbage is freed by reference counts the moment it is dropped; cycles
  are rare (exceptions with tracebacks), and they wait a little longer.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def tune() -> None:
    """Freeze what exists now and raise the first threshold; call once, after imports, before serving."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
