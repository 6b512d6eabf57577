"""Test-only custom node pack: loaders that stand in for CheckpointLoaderSimple and ControlNetLoader.

Workflow tests swap the stock loaders of each workflow for these nodes (tiny random models, no
files) and change nothing else.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

_CACHE: dict[tuple[int, bool], tuple] = {}
_CONTROLNET_CACHE: dict[int, object] = {}


class TinyCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactInversionTest_TinyCheckpointLoader",
            display_name="Tiny Checkpoint (tests)",
            category="testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="Seed of the random weights."),
                    io.Boolean.Input("attention", default=True, optional=True,
                                     tooltip="Off: a UNet without transformer blocks (no cross-attention).")],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, seed: int, attention: bool = True) -> io.NodeOutput:
        key = (seed, attention)
        if key not in _CACHE:
            from testbed.tiny import make_clip, make_model, make_vae  # the repo root is on sys.path

            _CACHE[key] = (make_model(seed, attention=attention), make_clip(seed + 1), make_vae(seed + 2))
        return io.NodeOutput(*_CACHE[key])


class TinyControlNetLoader(io.ComfyNode):
    """Stands in for ControlNetLoader: a tiny ControlNet matching the tiny checkpoint's UNet."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactInversionTest_TinyControlNetLoader",
            display_name="Tiny ControlNet (tests)",
            category="testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="Seed of the random weights.")],
            outputs=[io.ControlNet.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        # Cached like the checkpoint: ControlNetApplyAdvanced copies the net before setting a hint,
        # so the cached object itself is never changed by a run.
        if seed not in _CONTROLNET_CACHE:
            from testbed.tiny import make_controlnet  # the repo root is on sys.path

            _CONTROLNET_CACHE[seed] = make_controlnet(seed)
        return io.NodeOutput(_CONTROLNET_CACHE[seed])


class _Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TinyCheckpointLoader, TinyControlNetLoader]


async def comfy_entrypoint() -> ComfyExtension:
    return _Extension()
