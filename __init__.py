"""Exact Inversion: faithful real-image editing in ComfyUI with exactly invertible solvers.

ComfyUI loads this file as a custom node pack (V3 API). The ComfyUI-facing code is imported lazily,
so the pure-torch ``solvers`` package stays usable without ComfyUI.
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    """V3 entry point called by ComfyUI's custom-node loader."""
    from .nodes import ExactInversionExtension

    return ExactInversionExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
