"""Pure-torch editing maths the nodes call: null-text optimisation (nulltext.py), gradients through frozen
inference-mode weights without copying them (gradients.py) and blended guidance's masks and re-noising
(blend.py). Nothing here imports ComfyUI; tests/unit runs it on the Gaussian-mixture bed and closed forms."""
