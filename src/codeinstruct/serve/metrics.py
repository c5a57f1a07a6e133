"""`/metrics` in Prometheus' text format (prometheus_client), one registry per app.

    codeinstruct_requests_total{endpoint, status}     HTTP requests answered, by route and status code
    codeinstruct_prompt_tokens_total                  prompt tokens fed to the engine
    codeinstruct_prefix_cache_hit_tokens_total        of those, tokens whose keys and values a kept prompt gave
    codeinstruct_generation_tokens_total              tokens generated
    codeinstruct_requests_waiting                     engine requests admitted, not yet decoding
    codeinstruct_requests_running                     sequences decoding (engine) / upstream requests (proxy)
    codeinstruct_kv_cache_usage_ratio                 share of the KV cache's positions held (0..1)
    codeinstruct_time_to_first_token_seconds          histogram: submit -> first token
    codeinstruct_time_per_output_token_seconds        histogram: mean gap between a sequence's tokens

The gauges are read when scraped; the counters and histograms are fed as requests finish.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("codeinstruct_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("codeinstruct_prompt_tokens", "Prompt tokens fed to the engine", registry=r)
        self.prefix_hits = Counter(
            "codeinstruct_prefix_cache_hit_tokens", "Prompt tokens taken from a kept prompt's cache", registry=r
        )
        self.generation_tokens = Counter("codeinstruct_generation_tokens", "Tokens generated", registry=r)
        self.waiting = Gauge("codeinstruct_requests_waiting", "Requests admitted, not yet decoding", registry=r)
        self.running = Gauge(
            "codeinstruct_requests_running", "Sequences decoding (proxy: upstream requests)", registry=r
        )
        self.cache_usage = Gauge(
            "codeinstruct_kv_cache_usage_ratio", "Share of the KV cache's positions in use", registry=r
        )
        self.ttft = Histogram(
            "codeinstruct_time_to_first_token_seconds", "Time to first token", buckets=TTFT_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            "codeinstruct_time_per_output_token_seconds",
            "Mean time between a sequence's output tokens",
            buckets=TPOT_BUCKETS,
            registry=r,
        )

    def read_load_from(self, load: Callable[[], dict]) -> None:
        """Gauges from `load()` ({waiting, running, cache_usage}), called at each scrape."""
        self.waiting.set_function(lambda: load().get("waiting", 0))
        self.running.set_function(lambda: load().get("running", 0))
        self.cache_usage.set_function(lambda: load().get("cache_usage", 0.0))

    def sequence_done(self, submitted_at: float, token_times: list[float]) -> None:
        """A sequence's latency figures (perf_counter times); nothing for one that produced no token."""
        if not token_times:
            return
        self.generation_tokens.inc(len(token_times))
        self.ttft.observe(max(0.0, token_times[0] - submitted_at))
        if len(token_times) > 1:
            self.tpot.observe((token_times[-1] - token_times[0]) / (len(token_times) - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)


ENDPOINTS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/tokenize",
    "/detokenize",
    "/infill",
    "/completion",
    "/completions",
    "/health",
    "/metrics",
)


class CountRequests:
    """ASGI middleware: each HTTP request counted by endpoint and the status it was answered with (the status
    sent first: a stream that fails later still counts as 200). Pure ASGI, so streams and disconnects pass as is."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
