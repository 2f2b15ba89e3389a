"""Load an exported user tower (torch.export's ``.pt2``) without letting the file run code.

``torch.export.load`` trusts its archive. In torch 2.13 it runs code from it in these ways:

- pickles: a weights or constants entry flagged ``use_pickle`` goes to ``torch.load(weights_only=False)``;
  a constant whose path starts with ``custom_obj_`` to ``torch._C._pickle_load_obj`` and one with
  ``opaque_obj_`` to ``pickle.loads`` (``pt2_archive/_package.py``: ``_load_state_dict``,
  ``_load_constants``); the sample inputs and the legacy ``data/weights/model.pt`` go to
  ``deserialize_torch_artifact`` (``_export/serde/serialize.py``), which retries a failed
  ``weights_only=True`` with ``weights_only=False``; when ``load_pt2`` fails, ``torch.export.load``
  falls back to the 2.7-era layout, whose ``*.pt`` entries take the same road;
- native code: ``data/aotinductor/`` holds shared libraries that ``load_pt2`` loads;
- the model's JSON: ``guards_code`` is pasted into Python source and exec'd by ``.module()``
  (``export/_unlift.py``: ``_convert_guards_code_to_fn``); every ``expr_str`` goes to
  ``sympy.sympify``, which eval()s it (``GraphModuleDeserializer._parse_sym_expr``); a node's
  ``target`` is any callable under ``torch``, ``operator`` or ``math`` (``deserialize_operator``);
  names are pasted into the code FX generates (``fx/graph.py``: ``_format_target``) and node
  metadata into its comments; a pytree spec may import a module (``utils/_pytree.py``).

So the archive is read here and held to what ``torch.export.save`` writes for a plain model: its
metadata files, the model's JSON, the two payload configs and raw tensor entries, every payload
with ``use_pickle: false``. The JSON's strings that torch evaluates must be shape arithmetic over
tensor sizes, operators must be ATen operators, names plain identifiers. Node metadata (stack
traces, module paths) is dropped, the sample inputs are replaced with empty bytes (torch then
keeps none), and torch loads that checked copy from memory. Anything else is refused.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import math
import operator
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch

from raytower.errors import ConfigError

REFUSED_PICKLE = "refused: the file asks to unpickle objects"
REFUSED_CODE = "refused: the file asks to run code"

MODEL_JSON = "models/model.json"  # torch.export.save names its one program "model"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
# Plain metadata torch.export.save writes beside the model (torch 2.13 and 2.14).
METADATA = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")
PAYLOAD_DIRS = {WEIGHTS_CONFIG: ("data/weights/", "weight_"), CONSTANTS_CONFIG: ("data/constants/", "tensor_")}
_PAYLOAD_ENTRY = re.compile(r"data/(weights/weight|constants/tensor)_[0-9]+\Z")
_PICKLED_ENTRY = re.compile(r"(custom_obj_|opaque_obj_)|\.(pt|pkl)\Z")  # what torch would unpickle
_PLAIN = re.compile(r"[A-Za-z0-9_.]*\Z")  # every name in the JSON: safe in generated code
_SYMBOL = re.compile(r"[a-z]+[0-9]+\Z")  # a shape symbol: s10, u0


def load_tower(path: str | Path) -> torch.nn.Module:
    """The exported program at ``path`` as a module, loaded from a checked copy."""
    path = Path(path)
    if _torch_release() < (2, 6):  # torch.load's default was weights_only=False
        raise ConfigError(f"refused: loading an exported model needs torch 2.6 or later (this is "
                          f"{torch.__version__}, whose loader unpickles objects)", path)
    data = checked_archive(path)
    with _quiet_torch() as records:
        try:
            return torch.export.load(io.BytesIO(data)).module()
        except Exception as e:  # what torch logged is the cause; what it raised may be its fallback's
            cause = next((r.exc_info[1] for r in records if r.exc_info and r.exc_info[1]), e)
            raise ConfigError(f"a damaged exported model ({_one_line(cause)})", path) from None


def checked_archive(path: str | Path) -> bytes:
    """The archive at ``path``, rebuilt from its allowed entries only; ConfigError otherwise."""
    path = Path(path)
    entries = _read_entries(path)
    for name in entries:
        if name in METADATA or name in (MODEL_JSON, SAMPLE_INPUTS, *PAYLOAD_DIRS) or _PAYLOAD_ENTRY.match(name):
            continue
        if _PICKLED_ENTRY.search(name):
            raise ConfigError(f"{REFUSED_PICKLE} ({name[:80]})", path)
        raise ConfigError(f"{REFUSED_PICKLE} or load code: {name[:80]!r} is not part of a plain exported model", path)
    for name in (MODEL_JSON, *PAYLOAD_DIRS, "archive_format"):
        if name not in entries:
            raise ConfigError(f"a damaged exported model (no {name})", path)
    if entries["archive_format"] != b"pt2":
        raise ConfigError("a damaged exported model (not a torch.export archive)", path)
    for config, (folder, prefix) in PAYLOAD_DIRS.items():
        _check_payload_config(_json(entries, config, path), config, folder, prefix, entries, path)
    if not _plain_tensors(entries.get(SAMPLE_INPUTS, b"")):
        raise ConfigError(f"{REFUSED_PICKLE}: {SAMPLE_INPUTS} holds more than tensors", path)
    entries[SAMPLE_INPUTS] = b""  # torch reads an empty record as "no sample inputs"; serving needs none
    entries[MODEL_JSON] = json.dumps(_checked_program(_json(entries, MODEL_JSON, path), path)).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, blob in entries.items():
            z.writestr(f"user_tower/{name}", blob)
    return out.getvalue()


# --- the archive --------------------------------------------------------------------------------------


def _read_entries(path: Path) -> dict[str, bytes]:
    """Every entry under the archive's one top folder, by its name below it."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            root = infos[0].filename.split("/", 1)[0] + "/" if infos else ""
            entries = {}
            for info in infos:
                name = info.filename
                if not root or not name.startswith(root) or name[len(root):] in entries:
                    raise ConfigError("a damaged exported model (not one folder of unique entries)", path)
                if info.compress_type != zipfile.ZIP_STORED:  # torch stores; this also bounds what is read
                    raise ConfigError(f"a damaged exported model ({name} is compressed)", path)
                entries[name[len(root):]] = z.read(info)
            return entries
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as e:
        raise ConfigError(f"a damaged exported model (not a readable zip archive: {_one_line(e)})", path) from None


def _json(entries: dict[str, bytes], name: str, path: Path):
    try:
        return json.loads(entries[name])
    except ValueError as e:  # UnicodeDecodeError included
        raise ConfigError(f"a damaged exported model ({name}: {_one_line(e)})", path) from None


def _check_payload_config(doc, name: str, folder: str, prefix: str, entries: dict, path: Path) -> None:
    """Every payload a raw tensor: ``use_pickle: false`` and a ``weight_N``/``tensor_N`` entry."""
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"a damaged exported model ({name} has no config)", path)
    for fqn, meta in config.items():
        meta = meta if isinstance(meta, dict) else {}
        stored = str(meta.get("path_name"))
        if meta.get("use_pickle") is not False or not re.fullmatch(prefix + "[0-9]+", stored):
            raise ConfigError(f"{REFUSED_PICKLE}: {name} stores {str(fqn)[:80]!r} as {stored[:40]!r}, not as a "
                              "raw tensor", path)
        if not isinstance(meta.get("tensor_meta"), dict) or folder + stored not in entries:
            raise ConfigError(f"a damaged exported model ({name}: {stored} has no tensor)", path)
    _check_strings(doc, None, path)


# Pickle globals torch.save uses for a tuple or dict of plain tensors.
_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")}
_STORAGE = re.compile(r"(Untyped|Byte|Char|Short|Int|Long|Half|Float|Double|Bool|BFloat16)Storage\Z")


def _plain_tensors(blob: bytes) -> bool:
    """Whether the sample inputs are torch.save's tensors, read by scanning opcodes (never unpickled)."""
    if not blob:
        return True
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            pickles = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
        return bool(pickles) and all(_pickle_globals_plain(p) for p in pickles)
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError):
        return False


def _pickle_globals_plain(data: bytes) -> bool:
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            if (module, attr) not in _TENSOR_GLOBALS and not (module == "torch" and _STORAGE.match(attr)):
                return False
        elif op.name in ("STACK_GLOBAL", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"):
            return False  # torch.save writes protocol 2 with GLOBAL; these hide what they build
    return True


# --- the model's JSON ---------------------------------------------------------------------------------


def _checked_program(doc, path: Path):
    """The program's JSON with node metadata dropped, once every string torch evaluates is checked."""
    doc = _without_metadata(doc)
    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        raise ConfigError(f"a damaged exported model ({MODEL_JSON} is not an exported program)", path)
    _check_strings(doc, None, path)
    return doc


def _without_metadata(x):
    """Node and module metadata hold free text (stack traces, module paths) FX writes into code."""
    if isinstance(x, dict):
        return {k: ({} if k == "metadata" and isinstance(v, dict) else _without_metadata(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [_without_metadata(v) for v in x]
    return x


def _check_strings(x, key: str | None, path: Path) -> None:
    """Every key a plain name and every string what its field allows, anywhere in ``x``."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k in ("as_custom_obj", "custom_obj") or (k == "custom_obj_values" and v):
                raise ConfigError(f"{REFUSED_PICKLE}: the program takes a custom object", path)
            if not isinstance(k, str) or not _PLAIN.match(k):
                raise ConfigError(f"{REFUSED_CODE}: {str(k)[:60]!r} is not a plain name", path)
            _check_strings(v, k, path)
    elif isinstance(x, list):
        for v in x:
            _check_strings(v, key, path)
    elif isinstance(x, str) and not _string_allowed(x, key):
        raise ConfigError(f"{REFUSED_CODE}: its {key} {x[:80]!r} is not what torch.export writes", path)


def _string_allowed(s: str, key: str | None) -> bool:
    if key in ("as_string", "as_strings"):  # an operator's string argument: FX writes it with repr()
        return True
    if key == "torch_version":
        return re.fullmatch(r"[A-Za-z0-9_.+<=-]*", s) is not None
    if key in ("target", "as_operator"):
        return _aten_or_shape_operator(s)
    if key == "expr_str":
        return _parses_to(s, _shape_expression)
    if key == "guards_code":
        return _parses_to(s, _shape_guard)
    if key in ("in_spec", "out_spec"):
        return _plain_treespec(s)
    return _PLAIN.match(s) is not None


# Shape arithmetic the deserializer may call besides ATen operators (torch's _SYM_OPS).
_SHAPE_OPERATORS = {
    "_operator": {getattr(operator, n) for n in ("eq ne le ge lt gt neg pos mul add sub floordiv mod pow truediv "
                                                  "and_ or_").split()},
    "math": {math.trunc},
    "torch": {getattr(torch, n) for n in "sym_not sym_int sym_float sym_ite sym_max sym_min sym_sqrt".split()
              if hasattr(torch, n)},
}


def _aten_or_shape_operator(target: str) -> bool:
    parts = target.split(".")
    if len(parts) == 5 and parts[:3] == ["torch", "ops", "aten"] and all(p.isidentifier() for p in parts[3:]):
        try:
            op = getattr(getattr(torch.ops.aten, parts[3]), parts[4])
        except (AttributeError, RuntimeError):
            return False
        return isinstance(op, torch._ops.OpOverload)
    if len(parts) == 2 and parts[0] in _SHAPE_OPERATORS and parts[1].isidentifier() and not parts[1].startswith("__"):
        module = operator if parts[0] == "_operator" else math if parts[0] == "math" else torch
        return getattr(module, parts[1], None) in _SHAPE_OPERATORS[parts[0]]
    return False


def _parses_to(source: str, allowed) -> bool:
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError):
        return False
    return allowed(tree.body)


_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)


def _arithmetic(node, leaf) -> bool | None:
    """Comparisons, boolean and arithmetic operators over ``leaf``s; None for any other node."""
    if isinstance(node, ast.Compare):
        return all(isinstance(o, _COMPARE) for o in node.ops) and all(leaf(n) for n in (node.left, *node.comparators))
    if isinstance(node, ast.BoolOp):
        return all(leaf(n) for n in node.values)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)) and leaf(node.operand)
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, _ARITHMETIC) and leaf(node.left) and leaf(node.right)
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float, bool)
    return None


def _shape_guard(node) -> bool:
    """``L['seq'].size()[0] == L['users'].size()[0]``: comparisons of input sizes and numbers."""
    known = _arithmetic(node, _shape_guard)
    if known is not None:
        return known
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        index = node.slice.value
        if isinstance(node.value, ast.Name):  # L['name']: an input
            return node.value.id == "L" and isinstance(index, str) and _PLAIN.match(index) is not None
        return type(index) is int and _shape_guard(node.value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):  # .size(), .stride(), ...
        return (node.func.attr in ("size", "stride", "storage_offset", "dim") and not node.args
                and not node.keywords and _shape_guard(node.func.value))
    return False


# sympy's classes for shape expressions, and torch's (torch.utils._sympy.functions).
_SYMPY_CALLS = frozenset(
    "Symbol Integer Float Rational Add Mul Pow Max Min Mod Abs floor ceiling Eq Ne Lt Le Gt Ge Equality "
    "Unequality StrictLessThan StrictGreaterThan LessThan GreaterThan And Or Not FloorDiv ModularIndexing "
    "Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural FloatPow FloatTrueDiv "
    "IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat "
    "Identity".split())
_SYMPY_CONSTANTS = frozenset("oo zoo nan true false True False".split())
_NUMBER = re.compile(r"[-+0-9.e]+\Z")  # Float('1.5', precision=53)


def _shape_expression(node) -> bool:
    """``Symbol('s10', positive=True, integer=True)``, ``Mul(Integer(2), ...)``, ``s10 + 1``."""
    known = _arithmetic(node, _shape_expression)
    if known is not None:
        return known
    if isinstance(node, ast.Name):
        return node.id in _SYMPY_CONSTANTS or _SYMBOL.match(node.id) is not None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS):
        return False
    keywords_plain = all(k.arg and isinstance(k.value, ast.Constant) and type(k.value.value) in (bool, int)
                         for k in node.keywords)
    args = list(node.args)
    named = args[0].value if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str) else None
    if named is not None and node.func.id in ("Symbol", "Float"):  # Symbol('s10'), Float('1.5')
        if not (_SYMBOL if node.func.id == "Symbol" else _NUMBER).match(named):
            return False
        args.pop(0)
    return keywords_plain and all(_shape_expression(a) for a in args)


def _plain_treespec(text: str) -> bool:
    """A pytree spec of tuples, lists, dicts and leaves (no other type: those may import a module)."""
    try:
        protocol, spec = json.loads(text)
    except (ValueError, TypeError):
        return False
    return protocol == 1 and _plain_spec_node(spec)


def _plain_spec_node(node) -> bool:
    if not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"}:
        return False
    if node["type"] not in (None, "builtins.tuple", "builtins.list", "builtins.dict"):
        return False
    context = node["context"]
    if context is not None:
        try:
            context = json.loads(context)
        except (ValueError, TypeError):
            return False
    keys_plain = context is None or (isinstance(context, list) and all(
        isinstance(c, int) or (isinstance(c, str) and _PLAIN.match(c)) for c in context))
    return keys_plain and isinstance(node["children_spec"], list) and all(map(_plain_spec_node, node["children_spec"]))


# --- torch's own noise --------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_torch():
    """Keep torch's log records and warnings (a failed load logs its traceback) off stderr; yield them."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    keep, swapped = Keep(), {}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (name == "torch" or name.startswith("torch.")) and logger.handlers:
            swapped[logger] = logger.handlers
            logger.handlers = [keep]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield records
    finally:
        for logger, handlers in swapped.items():
            logger.handlers = handlers


def _torch_release() -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", torch.__version__).groups()
    return int(major), int(minor)


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
