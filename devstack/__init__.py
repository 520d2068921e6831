"""devstack: real Mosquitto / Prometheus / VictoriaMetrics / gateway processes from a checkout.

Dev-only: used by `make demo`, the tests and the benchmarks; not part of the wheel or the image.
"""
