"""The VLA model: HF VLM backbone adapters, the action head, presets, folders, weights payloads."""
