"""Hostile and clumsy prompts over HTTP: every one gets a clear answer, and the server keeps serving.

Why: users (and scripts) post anything to /prompt: NaN and infinity as JSON numbers, text for numbers,
wrong sockets, path-escaping file names. The design asks that each error is a ValueError naming the
node, the input and the fix, that nothing is written outside ComfyUI's folders, and that one bad
prompt never spoils the next. A case fails when the pack answers with a raw Python error, or when it
silently succeeds (a NaN or a wrong result): those failures are the list of things to fix.
The cases live in testbed/hostile_prompts.py; their ids say what each one sends.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.comfy_server import comfy_server, get_json, post_json, wait_history
from testbed.hostile_prompts import (
    Case,
    Context,
    Refusal,
    Validation,
    all_cases,
    describe_entry,
    execution_error,
    finite_success,
    output_texts,
    refusal_problems,
    tree_changes,
    tree_state,
    valid_prompt,
    validation_problems,
)

CASES = all_cases()
#: Calls of the cheap valid prompt so far: each gets its own denoise, so ComfyUI's cache cannot answer it.
_VALID = itertools.count()
#: The round trip an exact solver (EDICT, float64 state) must show after any hostile prompt.
EXACT = 1e-5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One server for the module; its base folder sits alone in a folder of its own, so that any file a
    hostile name manages to write beside it (an absolute path, '..') is seen."""
    outer = tmp_path_factory.mktemp("hostile-outer")
    with comfy_server(outer / "base") as srv:
        yield {**srv, "ctx": Context(srv["base"], outer)}


def post(server: dict[str, Any], prompt: dict) -> tuple[int, Any]:
    return post_json(server["url"] + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})


def valid_run_problems(server: dict[str, Any]) -> list[str]:
    """Run the cheap valid prompt; what went wrong with it (empty: it succeeded with an exact round trip)."""
    status, body = post(server, valid_prompt(next(_VALID)))
    if status != 200:
        return [f"the next valid prompt was refused: {status} {str(body)[:300]}"]
    entry = wait_history(server["url"], body["prompt_id"], 120)
    if entry["status"]["status_str"] != "success":
        return [f"the next valid prompt failed: {describe_entry(entry)}"]
    return exactness_problems(entry, "the next valid prompt")


def exactness_problems(entry: dict[str, Any], what: str) -> list[str]:
    """The valid prompt's Round-trip Check must report an exact EDICT round trip."""
    report = next((t for t in output_texts(entry) if "round trip" in t), "")
    try:
        relative = float(report.split("relative ")[1].split(",")[0])
    except (IndexError, ValueError):
        return [f"{what} gave no round-trip report: {output_texts(entry)}"]
    return [] if relative <= EXACT else [f"{what}'s EDICT round trip is no longer exact: {report}"]


def case_problems(server: dict[str, Any], case: Case, prompt: dict) -> list[str]:
    """Post the case's prompt and judge the answer against its expectation."""
    status, body = post(server, prompt)
    expect = case.expect
    if isinstance(expect, Validation):
        if status == 200:
            entry = wait_history(server["url"], body["prompt_id"], 300)
            return [f"/prompt accepted it (expected ComfyUI's validation error {expect.message!r}); then: "
                    f"{describe_entry(entry)}"]
        return validation_problems(status, body, expect, prompt[expect.node_id]["class_type"])
    assert isinstance(expect, Refusal)
    if status != 200 and expect.validated is not None:
        return validation_problems(status, body, expect.validated, prompt[expect.validated.node_id]["class_type"])
    if status != 200:
        return [f"/prompt refused it ({status}: {str(body)[:500]}); expected the pack to refuse it at run time"]
    entry = wait_history(server["url"], body["prompt_id"], 300)
    error = execution_error(entry)
    if error is None:
        if expect.or_success and finite_success(entry):
            return []
        return [f"silently ran: {describe_entry(entry)}; expected a refusal by {expect.node!r}"]
    problems = refusal_problems(str(error.get("exception_message", "")), expect)
    return [f"unclear answer: {describe_entry(entry)}", *problems] if problems else []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_prompt(server: dict[str, Any], case: Case) -> None:
    """The case gets its clear answer; the next valid prompt still runs exactly; no file appears, changes or
    goes away outside ComfyUI's input, output, temp and user folders."""
    if case.skip:
        pytest.skip(case.skip)
    ctx: Context = server["ctx"]
    if case.setup is not None:
        case.setup(ctx)
    before = tree_state(ctx)
    problems = case_problems(server, case, case.build(ctx))
    problems += valid_run_problems(server)
    problems += [f"outside ComfyUI's folders: {c}" for c in tree_changes(before, tree_state(ctx))]
    assert server["proc"].poll() is None, "the server died"
    assert not problems, f"{case.id}:\n  " + "\n  ".join(problems)


#: Hostile prompts of the burst: refused at run time whatever their message, or at /prompt (validation).
BURST_REFUSED = ["edict-p-nan", "bdia-gamma-nan", "aidi-tol-nan", "invert-stock-sampler-euler", "save-prefix-dotdot",
                 "load-name-dotdot", "invert-sigmas-flipped", "invert-latent-4-channels-into-toy",
                 "mask-word-not-in-prompt", "blended-guider-into-invert"]
BURST_INVALID = ["edict-p-inf", "scheduler-steps-negative"]
BURST_VALID = 8


def test_burst_of_prompts_queued_at_once(server: dict[str, Any]) -> None:
    """20 prompts posted back to back (8 valid, 10 refused at run time, 2 refused by validation): each ends
    with its own status, the valid ones reconstruct exactly, and the server answers afterwards."""
    by_id = {c.id: c for c in CASES}
    ctx: Context = server["ctx"]
    before = tree_state(ctx)
    plan: list[tuple[str, dict]] = [(f"valid-{i}", valid_prompt(next(_VALID))) for i in range(BURST_VALID)]
    plan += [(cid, by_id[cid].build(ctx)) for cid in BURST_REFUSED + BURST_INVALID]
    order = list(plan)
    random.Random(0).shuffle(order)  # valid and hostile mixed, the same order every run
    assert len(order) == 20
    queued: dict[str, str] = {}
    problems: list[str] = []
    start = time.monotonic()
    for name, prompt in order:
        status, body = post(server, prompt)
        if name in BURST_INVALID:
            if status != 400:
                problems.append(f"{name}: /prompt answered {status}, expected 400")
        elif status != 200:
            problems.append(f"{name}: /prompt answered {status}: {str(body)[:300]}")
        else:
            queued[name] = body["prompt_id"]
    for name, prompt_id in queued.items():
        entry = wait_history(server["url"], prompt_id, 300)
        want = "success" if name.startswith("valid-") else "error"
        if entry["status"]["status_str"] != want:
            problems.append(f"{name}: {describe_entry(entry)}; expected {want}")
        elif want == "success":
            problems += exactness_problems(entry, name)
    elapsed = time.monotonic() - start
    assert server["proc"].poll() is None, "the server died"
    assert get_json(server["url"] + "/system_stats")["system"]
    assert get_json(server["url"] + "/queue") == {"queue_running": [], "queue_pending": []}
    problems += valid_run_problems(server)
    problems += [f"outside ComfyUI's folders: {c}" for c in tree_changes(before, tree_state(ctx))]
    assert not problems, f"burst ({elapsed:.1f} s):\n  " + "\n  ".join(problems)


def test_case_ids_are_readable() -> None:
    """Ids are what the report lists: lowercase words joined by '-', unique, and at least 40 of them."""
    ids = [c.id for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert all(cid == cid.lower() and " " not in cid and "_" not in cid for cid in ids)


def test_tree_check_sees_writes_outside(server: dict[str, Any]) -> None:
    """The check of (c) is not vacuous: a file beside the base and one in its root are reported, files in
    input/ and output/ are not."""
    ctx: Context = server["ctx"]
    before = tree_state(ctx)
    stray = [ctx.outer / "stray.txt", ctx.base / "stray.txt"]
    allowed = [ctx.base / "input" / "fine.txt", ctx.base / "output" / "fine.txt"]
    for path in stray + allowed:
        path.write_text("x")
    try:
        changes = tree_changes(before, tree_state(ctx))
        assert changes == ["new: base/stray.txt", "new: stray.txt"], changes
    finally:
        for path in stray + allowed:
            path.unlink()
