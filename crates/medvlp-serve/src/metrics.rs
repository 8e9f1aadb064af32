//! Prometheus metrics of the server (text exposition at `GET /metrics`).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by route template and status code.
    pub requests: IntCounterVec,
    /// Latency by route template, seconds.
    pub latency: HistogramVec,
    /// Jobs per forward pass.
    pub batch_size: Histogram,
    /// Jobs waiting for the model thread.
    pub queue_depth: IntGauge,
    /// Requests being handled.
    pub in_flight: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("medvlp_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("medvlp_request_duration_seconds", "Request latency by route")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route"],
        )
        .expect("valid metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("medvlp_batch_size", "Inputs per model forward pass")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )
        .expect("valid metric");
        let queue_depth = IntGauge::new("medvlp_queue_depth", "Inputs waiting for the model")
            .expect("valid metric");
        let in_flight = IntGauge::new("medvlp_in_flight_requests", "Requests being handled")
            .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
            Box::new(in_flight.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics { registry, requests, latency, batch_size, queue_depth, in_flight }
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
