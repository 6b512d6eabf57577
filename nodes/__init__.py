"""ComfyUI glue: V3 nodes that adapt MODEL/GUIDER/SIGMAS/LATENT to the pure-torch solvers."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import attention_mask, blended_guidance, inversion, nulltext, samplers, storage, toy_model


class ExactInversionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*samplers.NODES, *inversion.NODES, *storage.NODES, *toy_model.NODES, *attention_mask.NODES,
                *blended_guidance.NODES, *nulltext.NODES]
