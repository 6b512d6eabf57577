"""Property-based hostile input for Save Inversion / Load Inversion, through the real nodes in ComfyUI.

Each suite asserts: a clear ValueError naming the node, the input and a fix, or a correct result;
never another exception; never a file created outside ComfyUI's output/inversions folder (the rest
of the host's temp base folder is compared before and after). Fixed seeds (derandomize), no example
database. The number of cases each suite generated is checked against its floor, so the total per
run stays known (see ``EXAMPLES``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed import comfyhost
from testbed.hostile_files import METADATA_KEY, apply, json_values, mutations

SAVE, LOAD = "ExactInversion_SaveInversion", "ExactInversion_LoadInversion"
#: generated cases per suite and run (the suites check they really ran at least 90% of them); set
#: EXACT_INVERSION_FUZZ_SCALE (e.g. 10) to run more of them, still from the fixed seed.
SCALE = float(os.environ.get("EXACT_INVERSION_FUZZ_SCALE", "1"))
EXAMPLES = {key: int(n * SCALE) for key, n in
            {"mutated": 400, "bytes": 400, "save_names": 300, "load_names": 300, "folder_entries": 100}.items()}
FUZZ = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
#: words of the fix every refusal ends with (choose a file, refresh, tick allow_mismatch, ...).
FIXES = ("choose", "use ", "save one", "refresh", "invert", "tick", "connect", "move", "free disk", "fix",
         "update the pack", "must be", "must name", "put a")
CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
         torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def pack_state_module():
    return comfyhost.pack_module("solvers.state")


@pytest.fixture(scope="module")
def base(host, node_classes):
    """A small valid inversion, saved by Save Inversion: its name, bytes, tensors and header."""
    state_module = pack_state_module()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, generator=g)
    state = state_module.InversionState(
        "edict", {"p": 0.93, "p_rule": "fixed", "state_dtype": "float64"}, "vp",
        torch.linspace(14.6, 0.03, 5, dtype=torch.float64), {"x": x, "y": x + 1e-3},
        extras={"source_latent": torch.randn(1, 4, 4, 4, generator=g), "noise_latent": x.float()},
        meta={"model": {"id": "0123456789abcdef"}, "conditioning": {"id": "fedcba9876543210", "cfg": 1.0},
              "warnings": [], "created": {"pack": "test"}})
    name = node_classes[SAVE].execute(inversion=state, filename_prefix="fuzz/base").result[0]
    path = Path(host["work"]) / "output" / name[: -len(" [output]")]
    tensors, metadata = state_module.to_flat(state)
    blocker = Path(host["work"]) / "output" / "inversions" / "fuzzblock"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "blocker").write_bytes(b"a file where a folder could be")
    return {"state": state, "name": name, "bytes": path.read_bytes(), "tensors": tensors,
            "header": json.loads(metadata[METADATA_KEY])}


def outside_inversions(work: str) -> set[str]:
    """Every path under the host's base folder except output/inversions: what a save must never touch."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(work):
        rel = os.path.relpath(dirpath, work)
        if rel == "output":
            dirnames[:] = [d for d in dirnames if d != "inversions"]
        found.update(os.path.join(rel, n) for n in dirnames + filenames)
    return found


def assert_clear(err: ValueError, node: str, input_name: str) -> None:
    text = str(err)
    assert text.startswith(f"{node}: input '{input_name}'"), text
    assert any(fix in text.lower() for fix in FIXES), text
    assert len(text) <= 700, text


def encode(tensors: dict[str, torch.Tensor], metadata) -> bytes:
    """A safetensors file as any writer may produce it (metadata of any JSON type, any tensor names)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def load_outcome(node_classes, name: str, input_name: str = "file_name") -> str:
    """'loaded' (and then saved again, which must work) or 'refused' with a clear message; nothing else."""
    kwargs = {"file": "(none)", "file_name": name} if input_name == "file_name" else {"file": name}
    try:
        state = node_classes[LOAD].execute(allow_mismatch=False, **kwargs).result[0]
    except ValueError as err:
        used = "file_name" if input_name == "file_name" and name else "file"
        assert_clear(err, "Load Inversion", used)
        return "refused"
    node_classes[SAVE].execute(inversion=state, filename_prefix="fuzz/resaved")
    return "loaded"


def run_suite(key: str, strategy, body) -> Counter[str]:
    """Run ``body`` on EXAMPLES[key] generated cases and check that they all really ran."""
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=EXAMPLES[key])
    @given(strategy)
    def check(case):
        outcomes[body(case)] += 1

    check()
    print(f"{key}: {sum(outcomes.values())} cases, {dict(outcomes)}")  # shown with pytest -s
    assert sum(outcomes.values()) >= 0.9 * EXAMPLES[key], outcomes
    return outcomes


def test_mutated_inversion_files(host, node_classes, base):
    """Header fields, metadata text, dtypes, shapes, values, missing and extra tensors, resealed or not."""
    before = outside_inversions(host["work"])
    target = Path(host["work"]) / "input" / "fuzz_mutated.safetensors"

    def body(drawn):
        tensors, metadata = apply(base["tensors"], base["header"], drawn)
        target.write_bytes(encode(tensors, metadata))
        return load_outcome(node_classes, "fuzz_mutated.safetensors [input]")

    outcomes = run_suite("mutated", mutations, body)
    assert outcomes["loaded"] and outcomes["refused"], outcomes
    target.unlink()
    assert outside_inversions(host["work"]) == before


def _safetensors_header(data: bytes) -> tuple[dict, bytes] | None:
    """The JSON header and the rest, or None when an earlier corruption left no header to edit."""
    length = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + length])
    except ValueError:
        return None
    return (header, data[8 + length:]) if isinstance(header, dict) and len(header) > 1 else None


ST_FIELDS = st.sampled_from(["dtype", "shape", "data_offsets", "delete", "duplicate", "__metadata__"])
ST_VALUES = st.one_of(
    st.sampled_from(["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64",
                     "F8_E4M3", "F8_E5M2", "F4", "F6_E2M3", "E8M0", "C64", "f64", "", "X"]),
    st.lists(st.integers(-2, 2**40), max_size=6), st.lists(st.integers(-1, 4096), max_size=3), json_values,
    st.sampled_from([{"exact_inversion": 5}, {"exact_inversion": None}, {"exact_inversion": "{}"}, [], None]),
)
byte_ops = st.one_of(
    st.tuples(st.just("length"), st.one_of(st.integers(0, 2**64 - 1),
                                           st.sampled_from([0, 1, 2, 7, 8, 100 * 1024 * 1024 + 1, 2**63]))),
    st.tuples(st.just("length_delta"), st.integers(-16, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("append"), st.binary(max_size=64)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1,
                                        max_size=8)),
    st.tuples(st.just("header"), st.integers(0, 10), ST_FIELDS, ST_VALUES),
)


def corrupt(data: bytes, op) -> bytes:
    """``data`` with one byte-level corruption: header length, truncation, garbage, flips, header entries."""
    kind = op[0]
    if kind == "length":
        return op[1].to_bytes(8, "little") + data[8:]
    if kind == "length_delta":
        return max(int.from_bytes(data[:8], "little") + op[1], 0).to_bytes(8, "little") + data[8:]
    if kind == "truncate":
        return data[: op[1] % (len(data) + 1)]
    if kind == "append":
        return data + op[1]
    if kind == "flip" and data:
        out = bytearray(data)
        for position, mask in op[1]:
            out[position % len(out)] ^= mask
        return bytes(out)
    parsed = _safetensors_header(data) if kind == "header" else None
    if parsed is None:
        return data
    header, body = parsed
    names = sorted(k for k in header if k != "__metadata__")
    name = names[op[1] % len(names)]
    if op[2] == "delete":
        del header[name]
    elif op[2] == "duplicate":
        header[name + ".copy"] = header[name]
    elif op[2] == "__metadata__":
        header["__metadata__"] = op[3]
    else:
        header[name][op[2]] = op[3]
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def test_corrupted_file_bytes(host, node_classes, base):
    before = outside_inversions(host["work"])
    target = Path(host["work"]) / "input" / "fuzz_bytes.safetensors"

    def body(ops):
        data = base["bytes"]
        for op in ops:
            data = corrupt(data, op)
        target.write_bytes(data)
        return load_outcome(node_classes, "fuzz_bytes.safetensors [input]")

    outcomes = run_suite("bytes", st.lists(byte_ops, min_size=1, max_size=3), body)
    assert outcomes["refused"], outcomes
    target.unlink()
    assert outside_inversions(host["work"]) == before


NAME_TOKENS = st.sampled_from(list("aZ09 ._-/\\:~*?\"<>|") + ["..", "\x00", "\n", "\t", "é", "\u202e", "\udcff",
                                                              "\U0001f600", "%2e", "$HOME"])
name_parts = st.one_of(st.lists(NAME_TOKENS, max_size=12).map("".join),
                       st.sampled_from(["..", ".", "", " ", "a" * 201, "a" * 200, "CON", "inv_99999_", "fuzzblock",
                                        "blocker", "inversions", "fuzz"]))
safe_parts = st.tuples(st.sampled_from(list("aZ09")), st.text(st.sampled_from(list("aZ09 ._-")), max_size=30))
safe_prefixes = st.lists(safe_parts.map("".join), min_size=1, max_size=18).map("/".join)
prefixes = st.one_of(
    st.lists(name_parts, min_size=1, max_size=20).map("/".join), st.text(max_size=30), safe_prefixes, safe_prefixes,
    st.sampled_from(["/abs", "C:\\x", "\\\\server\\share\\x", "/".join(["a"] * 17 + ["b"]), "x" * 256,
                     "/".join(["d"] * 2100), "fuzzblock/blocker/x", "fuzzblock/blocker", "..\\..\\x", "a\\..\\..\\b",
                     "fuzz/./x", "fuzz//x", "fuzz/x/", " ", "\x00", "fuzz/base"]),
)


def test_hostile_save_prefixes(host, node_classes, base):
    work = host["work"]
    inversions = os.path.realpath(os.path.join(work, "output", "inversions"))

    def body(prefix):
        before = outside_inversions(work)
        try:
            name = node_classes[SAVE].execute(inversion=base["state"], filename_prefix=prefix).result[0]
        except ValueError as err:
            assert_clear(err, "Save Inversion", "filename_prefix")
            outcome = "refused"
        else:
            assert name.startswith("inversions/") and name.endswith(" [output]"), name
            path = os.path.realpath(os.path.join(work, "output", name[: -len(" [output]")]))
            assert os.path.commonpath([inversions, path]) == inversions and os.path.isfile(path), name
            loaded = node_classes[LOAD].execute(file="(none)", allow_mismatch=False, file_name=name).result[0]
            assert torch.equal(loaded.latents["x"], base["state"].latents["x"])
            outcome = "saved"
        assert outside_inversions(work) == before, prefix
        return outcome

    outcomes = run_suite("save_names", prefixes, body)
    assert outcomes["saved"] and outcomes["refused"], outcomes


hostile_load_names = st.tuples(
    st.one_of(st.text(max_size=40), st.lists(name_parts, min_size=1, max_size=6).map("/".join),
              st.sampled_from(["../x", "/etc/passwd", "inversions/../../x", "C:/x", "\\\\srv\\x", "example.png",
                               "fuzz_ok.safetensors", "inversions/fuzz/base_00001_.safetensors", "", " ", "(none)",
                               "inversions/fuzzblock/blocker", "inversions/fuzzblock/blocker/x.safetensors",
                               "inversions", "inversions/fuzz", "a" * 5000, "/".join(["d"] * 3000)])),
    st.sampled_from(["", " [input]", " [output]", " [temp]", "[input]", " [input] ", ".safetensors [input]",
                     ".safetensors [output]", " [INPUT]", " [output]\n"]),
    st.sampled_from(["file", "file_name"]),
)
#: mostly hostile names, and valid ones written in the ways a user or a workflow may write them.
load_names = st.one_of(hostile_load_names, hostile_load_names, st.tuples(
    st.sampled_from(["fuzz_ok.safetensors", "inversions/fuzz/base_00001_.safetensors", "inversions\\fuzz\\"
                     "base_00001_.safetensors", "./fuzz_ok.safetensors", "inversions//fuzz/base_00001_.safetensors"]),
    st.sampled_from([" [input]", " [output]", " [input]  "]), st.sampled_from(["file", "file_name"])))


def test_hostile_load_names(host, node_classes, base):
    shutil.copy(Path(host["work"]) / "output" / base["name"][: -len(" [output]")],
                Path(host["work"]) / "input" / "fuzz_ok.safetensors")
    before = outside_inversions(host["work"])

    def body(case):
        stem, suffix, input_name = case
        return load_outcome(node_classes, stem + suffix, input_name)

    outcomes = run_suite("load_names", load_names, body)
    assert outcomes["loaded"] and outcomes["refused"], outcomes
    assert outside_inversions(host["work"]) == before


#: kinds the listing offers and that load, kinds it offers but Load refuses (content unchecked at listing time);
#: every other kind is left out of the listing (and logged).
LISTED_AND_LOADED = {"valid", "folder", "link_chain", "link_to_input_file"}
LISTED_AND_REFUSED = {"empty", "garbage"}
ENTRY_KINDS = ["dangling", "loop", "outside_link", "outside_file_link", "fifo", "folder", "folder_link",
               "control_name", "undecodable_name", "colon_name", "valid", "empty", "garbage", "deep", "hidden_folder",
               "link_chain", "link_to_input_file"]


def make_entry(root: Path, kind: str, name: str, valid: bytes, outside: Path) -> None:
    """One entry named ``<name>.safetensors`` (or a folder holding one) of the given hostile kind."""
    target = root / f"{name}.safetensors"
    if kind in ("dangling", "loop", "outside_link", "outside_file_link", "folder_link", "link_chain",
                "link_to_input_file"):
        destination = {"dangling": root / "nowhere", "loop": target, "outside_link": outside / "nothing",
                       "outside_file_link": outside / "valid.safetensors", "folder_link": root.parent,
                       "link_chain": root / "chain.safetensors", "link_to_input_file": root / "valid_target"}[kind]
        if kind == "link_chain":
            (root / "chain.safetensors").symlink_to(root / "chain2")
            (root / "chain2").symlink_to(root / "valid_target")
        if kind in ("link_to_input_file", "link_chain"):
            (root / "valid_target").write_bytes(valid)
        target.symlink_to(destination)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind in ("folder", "hidden_folder"):
        folder = root / (f".{name}.safetensors" if kind == "hidden_folder" else f"{name}.safetensors")
        folder.mkdir()
        (folder / "inner.safetensors").write_bytes(valid)
    elif kind in ("control_name", "undecodable_name", "colon_name"):
        raw = {"control_name": f"{name}\x07\n.safetensors".encode(), "undecodable_name": b"\xff\xfe.safetensors",
               "colon_name": f"{name}:x.safetensors".encode()}[kind]
        with open(os.path.join(os.fsencode(root), raw), "wb") as f:
            f.write(valid)
    elif kind == "deep":
        folder = root.joinpath(*["d"] * 34)
        folder.mkdir(parents=True)
        (folder / f"{name}.safetensors").write_bytes(valid)
    else:
        target.write_bytes({"valid": valid, "empty": b"", "garbage": b"\x00" * 64}[kind])


def test_hostile_folder_entries(host, node_classes, base, tmp_path_factory):
    """Whatever sits in input/: the listing never fails, and every entry loads or is refused clearly."""
    root = Path(host["work"]) / "input" / "fuzz_entries"
    outside = tmp_path_factory.mktemp("outside")
    (outside / "valid.safetensors").write_bytes(base["bytes"])
    names = st.text(st.sampled_from(list("ab09 ._-é")), min_size=1, max_size=8).filter(
        lambda n: n.strip(". ") and not n.startswith("."))

    def body(case):
        kind, name = case
        root.mkdir()
        try:
            make_entry(root, kind, name, base["bytes"], outside)
            options = node_classes[LOAD].INPUT_TYPES()["required"]["file"][1]["options"]
            mine = [o for o in options if o.startswith("fuzz_entries/") and "chain" not in o]
            results = {load_outcome(node_classes, o, "file") for o in mine}
            expected = ({"loaded"} if kind in LISTED_AND_LOADED else {"refused"} if kind in LISTED_AND_REFUSED
                        else set())
            assert results == expected, (kind, mine, results)
            direct = load_outcome(node_classes, f"fuzz_entries/{name}.safetensors [input]")
        finally:
            shutil.rmtree(root)
        return f"{kind}:{direct}:{len(mine)}"

    outcomes = run_suite("folder_entries", st.tuples(st.sampled_from(ENTRY_KINDS), names), body)
    kinds = {key.split(":")[0] for key in outcomes}
    assert len(kinds) >= 12, outcomes
