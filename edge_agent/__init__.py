"""The edge agent daemon: ONNX Runtime model, deferral policy, cloud link with breaker.

Never imports torch.
"""
