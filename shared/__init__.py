"""Code both the edge agent and the cloud router use. Never imports torch."""
