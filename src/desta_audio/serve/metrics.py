"""Prometheus metrics of one server instance (own registry, so several apps in one process stay apart)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServeMetrics", "CONTENT_TYPE_LATEST", "ResponseCounter"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "desta_requests", "API requests by route and outcome (HTTP status), refused ones included.",
            ["route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "desta_request_latency_seconds",
            "Time from accepting a chat request to its full answer.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "desta_batch_size", "Conversations per batched generate call.", buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self.queue_wait = Histogram(
            "desta_queue_wait_seconds",
            "Time from accepting a chat request to the start of its batch (queue, batch window and refill wait).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "desta_completion_tokens", "Tokens generated in answers.", registry=self.registry
        )
        self.audio_seconds = Counter(
            "desta_audio_seconds", "Seconds of audio received in requests.", registry=self.registry
        )
        self.client_disconnects = Counter(
            "desta_client_disconnects",
            "Chat requests whose client left before the answer was complete (their generation was stopped).",
            registry=self.registry,
        )
        self.queue_depth = Gauge("desta_queue_depth", "Requests waiting for a batch.", registry=self.registry)
        self.running = Gauge("desta_running_requests", "Requests in the batch being generated.", registry=self.registry)

    def watch_queue(self, depth: Callable[[], float], running: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)
        self.running.set_function(running)

    def watch_audio_cache(self, cache: Callable[[], Any]) -> None:
        """Report the model's audio cache (read at each scrape; `cache()` may return None when it is off)."""
        self.registry.register(_AudioCacheCollector(cache))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ResponseCounter:
    """ASGI middleware: counts each response to one of `routes` once, by route and status, whoever answered it (the
    route, validation, authentication, the body-size limit). CORS preflights are not requests to the API. A request
    that fails before any response is counted as the 500 the server then sends; a chat request whose client left before
its answer, as the 499 the API records for it."""

    def __init__(self, app: Any, counter: Counter, routes: tuple[str, ...]) -> None:
        self.app, self.counter, self.routes = app, counter, routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        route = scope.get("path")
        if scope["type"] != "http" or route not in self.routes or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        status: int | None = None

        async def send_counted(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start" and status is None:
                status = int(message["status"])
                self.counter.labels(route=route, status=str(status)).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            if status is None:
                self.counter.labels(route=route, status="500").inc()
            raise


class _AudioCacheCollector:
    def __init__(self, cache: Callable[[], Any]) -> None:
        self._cache = cache

    def describe(self) -> list:
        return []  # collected at scrape time only

    def collect(self) -> Iterator[Any]:
        cache = self._cache()
        lookups = CounterMetricFamily("desta_audio_cache_lookups", "Audio cache look-ups of distinct clips by result.",
                                      labels=["result"])
        lookups.add_metric(["hit"], cache.hits if cache else 0)
        lookups.add_metric(["miss"], cache.misses if cache else 0)
        yield lookups
        yield GaugeMetricFamily("desta_audio_cache_bytes", "Bytes held by the audio cache.",
                                value=cache.nbytes if cache else 0)
        yield GaugeMetricFamily("desta_audio_cache_entries", "Clips held by the audio cache.",
                                value=len(cache) if cache else 0)
