"""The contract suite's kernel half needs IPVS: fail at once, naming how to run it, when absent."""

from tests.kernel.conftest import _needs_ipvs  # noqa: F401 - an autouse fixture, registered here
