"""anima-lora-flow: Anima LoRA training as a resumable Prefect 3 workflow."""

__version__ = "0.1.0"
