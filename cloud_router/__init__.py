"""The cloud router: gRPC front end, dynamic batcher, schedulers, model host."""
