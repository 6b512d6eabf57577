"""Interrupt latency over HTTP: every node that can run long stops soon after POST /interrupt.

Why: the design asks every loop to respect ComfyUI's interruption, and the issue asks that Cancel stops
a run within about a second of CPU time. For each long-running node (Invert and Edit from Inversion with
each solver, Null-text Inversion, Attention Mask, Blended Guidance through Edit) a prompt sized to run
for several seconds on one CPU core is queued; once the node is executing and has reported progress,
/interrupt is posted, and the time to the prompt's end is measured (wall clock, and CPU time of the
server process, which the other jobs on a shared machine do not inflate). ComfyUI must record
'execution_interrupted' at the long node.

The sizes come from a calibration on the running server: the CPU time of one model evaluation of the
embedded toy model (cfg 1 and cfg 2), and the latency of the stock SamplerCustomAdvanced (euler), which
checks interruption at each step: that is "one model evaluation plus the server's overhead", measured.
The bound is that plus a few evaluations, and never below the issue's one second of CPU time (see
``Calibration.bound_cpu``). Each node is interrupted REPEATS times, half a step after a progress message.
Run with ``pytest -s`` for the table of latencies.

What the numbers show: ComfyUI's own layers (comfy.ops, which the toy model and every stock loader build
on) check interruption in every forward call, so a model evaluation stops within one layer; the pack
checks before each evaluation too. The suite therefore guards that the pack neither swallows the
interruption (a broad ``except``) nor runs long between model calls, and that the stop is recorded at the
long node.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from testbed.comfy_server import comfy_server, get_json, listen_ws, post_json, wait_history
from testbed.hostile_prompts import BLENDED_DEFAULTS, SOURCE, Graph, edict, invert, node, toy_base

#: What the issue asks: a run stops within about a second of CPU time after Cancel.
ISSUE_LIMIT_CPU = 1.0
#: Model evaluations allowed beyond the stock sampler's latency: the evaluation in flight when /interrupt
#: arrives may be a larger unit in the pack (Blended Guidance evaluates two branches per call, null-text
#: inversion a forward and a backward pass), and the pack checks before each call, not inside it.
EXTRA_EVALUATIONS = 4
#: How long each long node would run if not interrupted (seconds of model evaluations, from the calibration).
TARGET_S = 6.0
#: Interruptions per long node (the prompt queued again each time); the table shows the worst.
REPEATS = 2
#: A wall-clock limit on a shared machine (2 cores, other jobs): a hang fails even if the CPU time is small.
WALL_FACTOR = 4.0
#: Words of the Attention Mask case: a long prompt (10 toy sections of 14 words, 160 tokens) and many words.
LONG_SOURCE = " ".join([SOURCE] * 20)
MASK_WORDS = "red, circle, green, background, a, on"


@dataclass
class Calibration:
    """Measured on the running server (CPU seconds of the server process)."""

    pass_cfg1: float  # one model evaluation of the toy model at 32x32, cfg 1 (one conditioning)
    pass_cfg2: float  # the same at cfg 2 (conditional and unconditional, batched)
    stock_cpu: float  # stock SamplerCustomAdvanced (euler) interrupted: one evaluation plus the server's overhead
    stock_wall: float

    @property
    def bound_cpu(self) -> float:
        return max(ISSUE_LIMIT_CPU, self.stock_cpu + EXTRA_EVALUATIONS * self.pass_cfg2)

    def steps(self, passes_per_step: float, seconds_per_pass: float) -> int:
        return max(2, math.ceil(TARGET_S / (passes_per_step * seconds_per_pass)))


@dataclass
class Measure:
    """One interruption."""

    ran_s: float = 0.0  # node time before /interrupt
    progress: int = 0  # progress messages of the node seen before /interrupt
    wall_ws: float = math.nan  # /interrupt -> 'execution_interrupted' on the websocket
    wall: float = math.nan  # /interrupt -> the history entry (the prompt's end)
    cpu: float = math.nan  # server CPU time over the same span
    interrupted_at: str = ""


@dataclass
class Row:
    """A long node, interrupted REPEATS times (the prompt queued again each time)."""

    case: str
    node: str
    solver: str
    steps: int
    planned_s: float
    runs: list[Measure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def worst(self) -> Measure:
        """The slowest run by wall clock (CPU time is counted in 10 ms ticks: see max_cpu)."""
        return max(self.runs, key=lambda m: (m.wall, m.cpu)) if self.runs else Measure()

    @property
    def max_cpu(self) -> float:
        return max((m.cpu for m in self.runs), default=math.nan)


ROWS: list[Row] = []


def server_cpu(proc: Any) -> float:
    """User + system CPU seconds of the server process so far (all its threads)."""
    with open(f"/proc/{proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with comfy_server(tmp_path_factory.mktemp("interrupts")) as srv:
        yield srv


@pytest.fixture(scope="module", autouse=True)
def summary_table(server: dict[str, Any]) -> Iterator[None]:
    """Print the latencies (pytest -s) once every case has run."""
    start = time.monotonic()
    yield
    print(f"\n\nInterrupt latency (toy model 32x32, one CPU thread; suite {time.monotonic() - start:.1f} s)")
    print("slowest run: 'ran' = node time before /interrupt, 'ws' = /interrupt -> execution_interrupted on the "
          "websocket, 'end' = /interrupt -> history entry; 'cpu' = most server CPU time over 'end' (10 ms ticks)")
    head = f"{'case':27} {'node':23} {'solver':6} {'steps':>5} {'plan s':>6} {'ran s':>5} {'prog':>4} " \
           f"{'ws s':>6} {'end s':>6} {'cpu s':>5}  {'end s, every run':17} interrupted at"
    print(head)
    print("-" * len(head))
    for r in ROWS:
        w = r.worst
        every = ", ".join(f"{m.wall:.3f}" for m in r.runs)
        print(f"{r.case:27} {r.node:23} {r.solver:6} {r.steps:5d} {r.planned_s:6.1f} {w.ran_s:5.1f} {w.progress:4d} "
              f"{w.wall_ws:6.3f} {w.wall:6.3f} {r.max_cpu:5.2f}  {every:17} {w.interrupted_at}"
              f"{'  FAIL' if r.problems else ''}")
    worst: dict[str, Row] = {}
    for r in ROWS:
        if r.node not in worst or r.worst.wall > worst[r.node].worst.wall:
            worst[r.node] = r
    print("\nworst per node: " + "; ".join(f"{n} {r.worst.wall:.3f} s wall / {r.max_cpu:.2f} s CPU ({r.solver})"
                                          for n, r in worst.items()))


def _run_ok(server: dict[str, Any], prompt: Graph, timeout: float = 180.0) -> dict[str, Any]:
    status, body = post_json(server["url"] + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    assert status == 200, body
    entry = wait_history(server["url"], body["prompt_id"], timeout)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry


def _with_output(graph: Graph) -> Graph:
    """An output node on Invert's noise latent, so a graph that only inverts is a valid prompt."""
    graph["inverted"] = node("ExactInversion_RoundTripCheck", original_latent=["latent", 0],
                             result_latent=["invert", 1])
    return graph


def _interrupt_and_wait(server: dict[str, Any], prompt: Graph, node_id: str, progress: int, row: Row) -> None:
    """Queue ``prompt``, wait until ``node_id`` runs and reported ``progress`` steps (then half a step more),
    interrupt, time the end; REPEATS times."""
    for _ in range(REPEATS):
        row.runs.append(_interrupt_once(server, prompt, node_id, progress, 0.5 * row.planned_s / row.steps,
                                        row.problems))


def _interrupt_once(server: dict[str, Any], prompt: Graph, node_id: str, progress: int, delay: float,
                    problems: list[str]) -> Measure:
    row = Measure()
    url, client_id = server["url"], str(uuid.uuid4())
    with listen_ws(url, client_id) as ws:
        status, body = post_json(url + "/prompt", {"prompt": prompt, "client_id": client_id})
        assert status == 200, body
        pid = body["prompt_id"]
        i, (t_exec, _, _) = ws.wait_for(
            lambda t, d: t == "executing" and d.get("node") == node_id and d.get("prompt_id") == pid, 180)
        try:
            for _ in range(progress):
                i, _msg = ws.wait_for(lambda t, d: t == "progress" and d.get("node") == node_id
                                      and d.get("prompt_id") == pid, 10, start=i + 1)
                row.progress += 1
        except TimeoutError:
            problems.append(f"the node reported {row.progress} progress steps in 10 s (expected {progress})")
        time.sleep(delay)  # land inside a step, not at the boundary where the progress hook itself checks
        row.ran_s = time.monotonic() - t_exec
        cpu0, t0 = server_cpu(server["proc"]), time.monotonic()
        post_json(url + "/interrupt", {"prompt_id": pid})
        _, (t_ws, _, data) = ws.wait_for(lambda t, d: t in ("execution_interrupted", "execution_error",
                                                            "execution_success") and d.get("prompt_id") == pid, 120)
        row.wall_ws = t_ws - t0
        while True:
            hist = get_json(f"{url}/history/{pid}")
            if pid in hist and hist[pid]["status"].get("completed") is not None:
                break
            time.sleep(0.01)
        row.wall, row.cpu = time.monotonic() - t0, server_cpu(server["proc"]) - cpu0
    interrupted = [m[1] for m in hist[pid]["status"]["messages"] if m[0] == "execution_interrupted"]
    row.interrupted_at = interrupted[0].get("node_id", "?") if interrupted else f"(not interrupted: {data})"
    if not interrupted or interrupted[0].get("node_id") != node_id:
        problems.append(f"ComfyUI recorded {row.interrupted_at!r}, not an interruption at {node_id!r}")
    return row


@pytest.fixture(scope="module")
def calibration(server: dict[str, Any]) -> Calibration:
    """CPU seconds per model evaluation (cfg 1 and 2), and the stock sampler's interrupt latency."""
    ddim = node("ExactInversion_DDIMSolver", inversion_label="current", state_dtype="float64")
    _run_ok(server, _with_output(invert(toy_base(steps=2, solver=ddim))))  # loads the model
    per_pass = []
    for cfg in (1.0, 2.0):
        steps = 40
        cpu0 = server_cpu(server["proc"])
        _run_ok(server, _with_output(invert(toy_base(steps=steps, cfg=cfg, solver=ddim))))
        per_pass.append((server_cpu(server["proc"]) - cpu0) / steps)
    steps = math.ceil(TARGET_S / per_pass[0])
    stock = {**toy_base(steps=steps, solver=node("KSamplerSelect", sampler_name="euler")),
             "noise": node("RandomNoise", noise_seed=0),
             "sample": node("SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0], sampler=["solver", 0],
                            sigmas=["sigmas", 0], latent_image=["latent", 0]),
             "out": node("ExactInversion_RoundTripCheck", original_latent=["latent", 0], result_latent=["sample", 0])}
    row = Row("stock-euler (calibration)", "SamplerCustomAdvanced", "euler", steps, steps * per_pass[0])
    _interrupt_and_wait(server, stock, "sample", 3, row)
    ROWS.append(row)
    assert not row.problems, row.problems
    cal = Calibration(per_pass[0], per_pass[1], row.max_cpu, row.worst.wall)
    print(f"\ncalibration: {cal.pass_cfg1 * 1000:.1f} ms CPU per model evaluation at cfg 1, "
          f"{cal.pass_cfg2 * 1000:.1f} ms at cfg 2; stock euler interrupted in {cal.stock_wall:.3f} s wall, "
          f"{cal.stock_cpu:.2f} s CPU; bound {cal.bound_cpu:.2f} s CPU")
    return cal


# --- the long nodes --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Solver:
    name: str
    invert_node: dict[str, Any]  # for the Invert cases
    invert_passes: float  # model evaluations per inversion step
    edit_node: dict[str, Any]  # for the inversion an Edit case starts from (may be cheaper, e.g. AIDI max_iter 1)
    prereq_passes: float
    edit_passes: float  # evaluations per sampling step


def _aidi(max_iter: int) -> dict[str, Any]:
    return node("ExactInversion_AIDISolver", variant="A", max_iter=max_iter, tol=0.0, window=3, state_dtype="float64")


_DDIM = node("ExactInversion_DDIMSolver", inversion_label="current", state_dtype="float64")
_BDIA = node("ExactInversion_BDIASolver", gamma=1.0, state_dtype="float64")
_EES = node("ExactInversion_EESSolver", scheme="EES(2,5)", state_dtype="float64")
SOLVERS = {
    "DDIM": Solver("DDIM", _DDIM, 1, _DDIM, 1, 1),
    "EDICT": Solver("EDICT", edict(), 2, edict(), 2, 2),
    "BDIA": Solver("BDIA", _BDIA, 1, _BDIA, 1, 1),
    "AIDI": Solver("AIDI", _aidi(6), 7, _aidi(1), 2, 1),  # tol 0: every step runs max_iter + 1 evaluations
    "EES": Solver("EES", _EES, 3, _EES, 3, 3),
}


def _inverted(solver: Solver, steps: int, source: str = SOURCE) -> Graph:
    """The inversion an Edit, Attention Mask or Blended case starts from (run first, then cached by ComfyUI)."""
    return _with_output(invert(toy_base(steps=steps, solver=solver.edit_node, source=source)))


def _edit_graph(base: Graph) -> Graph:
    """Edit at cfg 2 with the target prompt (two batched conditionings: the edit costs more than the inversion)."""
    graph = dict(base)
    graph["edit_guider"] = node("CFGGuider", model=["toy", 0], positive=["target", 0], negative=["empty", 0], cfg=2.0)
    graph["edit"] = node("ExactInversion_Edit", guider=["edit_guider", 0], inversion=["invert", 0])
    graph["edited"] = node("ExactInversion_RoundTripCheck", original_latent=["latent", 0], result_latent=["edit", 0])
    return graph


@dataclass(frozen=True)
class LongCase:
    id: str
    node: str  # display name, for the table
    solver: str
    node_id: str  # the long node in the prompt
    plan: Callable[[Calibration], tuple[int, float, Graph | None, Graph]]  # steps, planned s, prerequisite, prompt
    progress: int = 3


def _invert_case(name: str) -> LongCase:
    s = SOLVERS[name]

    def plan(cal: Calibration) -> tuple[int, float, Graph | None, Graph]:
        steps = cal.steps(s.invert_passes, cal.pass_cfg1)
        return steps, steps * s.invert_passes * cal.pass_cfg1, None, _with_output(invert(toy_base(
            steps=steps, solver=s.invert_node)))

    return LongCase(f"invert-{name.lower()}", "Invert", name, "invert", plan)


def _edit_case(name: str, source: str = SOURCE) -> LongCase:
    s = SOLVERS[name]

    def plan(cal: Calibration) -> tuple[int, float, Graph | None, Graph]:
        steps = cal.steps(s.edit_passes, cal.pass_cfg2)
        base = _inverted(s, steps, source)
        return steps, steps * s.edit_passes * cal.pass_cfg2, base, _edit_graph(base)

    return LongCase(f"edit-{name.lower()}", "Edit from Inversion", name, "edit", plan)


def _mask_plan(cal: Calibration) -> tuple[int, float, Graph | None, Graph]:
    """The DDIM inversion of the Edit DDIM case (long prompt), then an Attention Mask of many words."""
    steps = cal.steps(SOLVERS["DDIM"].edit_passes, cal.pass_cfg2)
    base = _inverted(SOLVERS["DDIM"], steps, LONG_SOURCE)
    graph = {**base, "mask": node("ExactInversion_AttentionMask", guider=["guider", 0], inversion=["invert", 0],
                                  clip=["toy", 1], prompt=LONG_SOURCE, words=MASK_WORDS, resolution="all", start=0.0,
                                  end=1.0),
             "mask_image": node("MaskToImage", mask=["mask", 0]),
             "masked": node("ExactInversion_RoundTripCheck", original_image=["mask_image", 0],
                            result_image=["mask_image", 0])}
    return steps, steps * cal.pass_cfg1 * 2, base, graph  # recording the maps doubles a step (measured: 2.3x)


def _blended_plan(cal: Calibration) -> tuple[int, float, Graph | None, Graph]:
    """The EDICT inversion of the Edit EDICT case, edited through a Blended Guidance Guider."""
    s = SOLVERS["EDICT"]
    steps = cal.steps(s.edit_passes, cal.pass_cfg2)
    base = _inverted(s, steps)
    graph = {**base,
             "blend": node("ExactInversion_BlendedGuidance", model=["toy", 0], source_positive=["source", 0],
                           target_positive=["target", 0], negative=["empty", 0], clip=["toy", 1], **BLENDED_DEFAULTS),
             "edit": node("ExactInversion_Edit", guider=["blend", 0], inversion=["invert", 0]),
             "edited": node("ExactInversion_RoundTripCheck", original_latent=["latent", 0], result_latent=["edit", 0])}
    # per EDICT half-step: the reconstruction branch (cfg 1) and the target branch (cfg 4)
    return steps, steps * s.edit_passes * (cal.pass_cfg1 + cal.pass_cfg2), base, graph


NTI_INNER = 3


def _nti_plan(cal: Calibration) -> tuple[int, float, Graph | None, Graph]:
    """Null-text optimisation (nti, early stop off): per step NTI_INNER Adam iterations of a guided forward
    pass and its backward pass (about 3 evaluations at cfg 2), after a DDIM 'next' pivot inversion."""
    per_step = NTI_INNER * 3 * cal.pass_cfg2 + cal.pass_cfg1
    steps = max(2, math.ceil(TARGET_S / per_step))
    graph = toy_base(steps=steps, cfg=4.0, solver=node("ExactInversion_DDIMSolver", inversion_label="next",
                                                       state_dtype="float64"))
    graph["invert"] = node("ExactInversion_NullTextInversion", guider=["guider", 0], sampler=["solver", 0],
                           sigmas=["sigmas", 0], latent=["latent", 0], method="nti", inner_steps=NTI_INNER,
                           learning_rate=0.01, early_stop=0.0, early_stop_schedule="growing", starts=1, hops=0,
                           start_scale=0.01, seed=0)
    return steps, steps * per_step, None, _with_output(graph)


#: In this order, so that each inversion an Edit starts from is still in ComfyUI's cache for the next case.
CASES = [
    *[_invert_case(n) for n in SOLVERS],
    _edit_case("EDICT"),
    LongCase("edit-blended-guidance", "Blended Guidance (Edit)", "EDICT", "edit", _blended_plan),
    _edit_case("DDIM", LONG_SOURCE),
    LongCase("attention-mask-long-prompt", "Attention Mask", "DDIM", "mask", _mask_plan),
    _edit_case("BDIA"), _edit_case("AIDI"), _edit_case("EES"),
    LongCase("nulltext-nti", "Null-text Inversion", "DDIM", "invert", _nti_plan, progress=2),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_interrupt_stops_long_node(server: dict[str, Any], calibration: Calibration, case: LongCase) -> None:
    """Interrupted while it runs, the long node ends the prompt within the bound, recorded as interrupted there;
    the server then runs the next prompt."""
    steps, planned, prereq, prompt = case.plan(calibration)
    row = Row(case.id, case.node, case.solver, steps, planned)
    ROWS.append(row)
    assert planned >= TARGET_S * 0.9, f"the prompt is sized for {planned:.1f} s, not {TARGET_S} s"
    if prereq is not None:
        _run_ok(server, prereq)
    _interrupt_and_wait(server, prompt, case.node_id, case.progress, row)
    bound = calibration.bound_cpu
    if not row.max_cpu <= bound:
        row.problems.append(f"stopped after {row.max_cpu:.2f} s of server CPU time (bound {bound:.2f} s)")
    if not row.worst.wall <= WALL_FACTOR * bound:
        row.problems.append(f"stopped after {row.worst.wall:.2f} s wall clock (bound {WALL_FACTOR * bound:.2f} s)")
    assert server["proc"].poll() is None, "the server died"
    assert not row.problems, f"{case.id}: " + "; ".join(row.problems)
