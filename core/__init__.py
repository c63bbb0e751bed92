"""Helpers used by several packages: nothing here imports a package of anima_lora_flow above it."""
