"""A real Kubernetes control plane for the end-to-end tests, the benchmarks and the demo."""
