"""The test bed: network namespaces, ZooKeeper servers, the kernel VM, the lab and the fakes.

Shared by the tests, the lab and the benchmarks; the core and the engines never import it.
"""
