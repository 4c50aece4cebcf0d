"""HTTP prediction service: FastAPI app, dynamic batching, Prometheus metrics, offline web page."""
