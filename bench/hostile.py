"""Benchmark: the active director's longest VIP-renewal gap and its lapses under hostile loads.

The same lab, watch and loads as ``bench/lease.py`` (see there), with the hostile loads by
default: real servers whose headers never end (``endless``) or trickle (``slow``), a misc check
that prints without end (``chatty``), an API connection flood (``api``), a slowloris on the API
(``slowloris``: half-open connections trickling header bytes), a peer datagram flood (``peer``)
and a large valid config push (``push``). The last line is
``longest renewal gap: N ms, lapses: K`` over the loads other than ``quiet``.

    sudo .venv/bin/python bench/hostile.py [--duration 20] [--loads ...] [--quick] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lease import HOSTILE_LOADS, main

if __name__ == "__main__":
    sys.exit(main(loads=HOSTILE_LOADS, prog="bench/hostile.py", count_lapses=True))
