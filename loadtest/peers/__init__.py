"""The serving peers a user would pick instead of ours, each serving the published int8 model with one ONNX Runtime
thread, in its own native request format; `python -m loadtest.peers` starts and measures them (loadtest/peers/run.py)."""
