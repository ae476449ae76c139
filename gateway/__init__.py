"""comfyui-gateway: one ComfyUI-compatible URL in front of many ComfyUI servers."""

__version__ = "0.1.0"
