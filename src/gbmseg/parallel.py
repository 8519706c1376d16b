"""One way to run a function over many cases: a process pool when ``workers > 1``, else a plain loop.

Example:
    >>> parallel_map(str, [1, 2], workers=1, progress=False)
    ['1', '2']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm


def parallel_map(fn: Callable, items: Sequence, workers: int = 1, desc: str = "", progress: bool = True) -> list:
    """``[fn(x) for x in items]``, in order; in ``min(workers, len(items))`` processes when that is > 1
    (``fn`` and the items must then be picklable), with a tqdm bar unless ``progress`` is false."""
    items = list(items)
    if workers > 1 and len(items) > 1:
        with ProcessPoolExecutor(min(workers, len(items))) as pool:
            return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, disable=not progress))
    return [fn(x) for x in tqdm(items, desc=desc, disable=not progress)]
