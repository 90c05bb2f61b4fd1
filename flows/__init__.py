"""The Prefect flows that prefect.yaml names."""
