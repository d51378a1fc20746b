"""The director on a file-backed fake IPVS, for tests and benchmarks: the product's keeper
unchanged, and a worker whose table is ``FakeIpvs(path)`` instead of the kernel's.

``python -m lvsctl.testbed.director_main run --node FILE --fake-ipvs PATH`` starts the keeper;
it starts its worker as ``... worker --node FILE --fake-ipvs PATH --channel-fd N``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from lvsctl import director_main
from lvsctl.testbed.fake_ipvs import FakeIpvs

MODULE = "lvsctl.testbed.director_main"


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = director_main.parser(f"python -m {MODULE}", ["--fake-ipvs"]).parse_args(argv)
    if args.part == "run":
        director_main.guarded(lambda: director_main.run_keeper(
            args.node, insecure=args.insecure, worker_argv=director_main.worker_argv(
                MODULE, args.node, args.insecure, "--fake-ipvs", args.fake_ipvs)))
    director_main.guarded(lambda: director_main.run_worker(
        args.node, channel_fd=args.channel_fd, insecure=args.insecure,
        make_table=lambda _node: FakeIpvs(args.fake_ipvs)), director_main.WORKER_SETUP_FAILED)


if __name__ == "__main__":
    main()
