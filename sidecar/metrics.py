"""Prometheus metrics, in a private registry (nothing global), shared by the layers that record."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ns = "readiness_gate"
        reg = self.registry
        self.check_ready = Gauge(
            f"{ns}_check_ready",
            "1 when the check is ready after thresholds, 0 when not ready, -1 while pending.",
            ["check", "kind"],
            registry=reg,
        )
        self.check_results = Counter(
            f"{ns}_check_results",
            "Probe outcomes by check.",
            ["check", "kind", "result"],
            registry=reg,
        )
        self.check_duration = Histogram(
            f"{ns}_check_duration_seconds",
            "How long each probe took.",
            ["check", "kind"],
            buckets=_CHECK_BUCKETS,
            registry=reg,
        )
        self.gate_status = Gauge(
            f"{ns}_gate_status",
            "1 when the gate condition is (to be) True, 0 when False, -1 while pending.",
            ["gate"],
            registry=reg,
        )
        self.gate_transitions = Counter(
            f"{ns}_gate_transitions",
            "Gate condition status changes written to the API server.",
            ["gate", "status"],
            registry=reg,
        )
        self.api_requests = Counter(
            f"{ns}_api_requests",
            "Kubernetes API requests by verb and HTTP status code (0 = no response).",
            ["verb", "code"],
            registry=reg,
        )
        self.api_latency = Histogram(
            f"{ns}_api_request_duration_seconds",
            "Kubernetes API request latency.",
            ["verb"],
            buckets=_API_BUCKETS,
            registry=reg,
        )
        self.container_restarts = Counter(
            f"{ns}_container_restarts",
            "New instances of a followed container (another container ID) seen in the Pod's "
            "status after the first.",
            ["container"],
            registry=reg,
        )
        self.watch_events = Counter(
            f"{ns}_watch_events",
            "Events received on the watch of our own Pod, by type.",
            ["type"],
            registry=reg,
        )
        self.events_dropped = Counter(
            f"{ns}_events_dropped",
            "Kubernetes Events not sent because the queue was full or the API refused them.",
            ["reason"],
            registry=reg,
        )
        self.time_to_first_ready = Gauge(
            f"{ns}_seconds_to_first_ready",
            "Seconds from agent start to the first time the gate was written True.",
            ["gate"],
            registry=reg,
        )
