"""The cloud router: gRPC front end, dynamic batcher, schedulers, model host.

Importing the package registers the cloud model runtimes with `shared.model_loader.load_model`.
"""

from cloud_router import model_runtimes as _model_runtimes  # noqa: F401  (registers the runtimes)
