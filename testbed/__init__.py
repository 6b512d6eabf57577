"""The project's test bed, shared by tests/, bench/ and scripts/ (never shipped: .comfyignore).

* ``gmm``: the closed-form Gaussian-mixture model (exact denoisers at every noise level), pure torch;
* ``comfyhost``: a real ComfyUI booted in-process, graphs run through its executor, the pack's own modules;
* ``comfy_server``: ComfyUI's ``main.py`` with the pack, over HTTP (and websocket);
* ``tiny``, ``tiny_families``: tiny random models in ComfyUI's own classes; ``tinypack``: their loader nodes;
* ``solver_nodes``: the one table of the pack's solver nodes, and the invert -> edit round trip per layer;
* ``workflow_api``, ``images``, ``browser``, ``hostile_files``, ``hostile_prompts``: what the layers drive.
"""
