"""Runners and deployment: the embedded runtime, `streamrec` CLI, compose/k8s/dashboards."""
