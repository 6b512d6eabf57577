"""Test-only custom node pack: a loader that stands in for CheckpointLoaderSimple with a tiny model.

Workflow tests swap the checkpoint loader of each workflow for this node and change nothing else.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

_CACHE: dict[int, tuple] = {}


class TinyCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactInversionTest_TinyCheckpointLoader",
            display_name="Tiny Checkpoint (tests)",
            category="testing",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="Seed of the random weights.")],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        if seed not in _CACHE:
            from tiny import make_clip, make_model, make_vae  # tests/support is on sys.path

            _CACHE[seed] = (make_model(seed), make_clip(seed + 1), make_vae(seed + 2))
        return io.NodeOutput(*_CACHE[seed])


class _Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TinyCheckpointLoader]


async def comfy_entrypoint() -> ComfyExtension:
    return _Extension()
