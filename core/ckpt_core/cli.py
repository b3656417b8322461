"""The ``ckpt-core`` command: the API's verbs (``ckpt_core.api``) for a terminal or a script.

Facts print as aligned text, or as one JSON document with ``--json``. Errors print one line
(``ckpt-core: error: ...``) and exit with the error kind's code (``ckpt_core.errors``);
``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import attrs

from . import api, losses
from .dtypes import ALL_DTYPES, STANDARD_DTYPES
from .errors import CkptError, CkptWarning, UnknownFormat
from .model import Checkpoint, FormatSpec, RunEntry, TrainState
from .plugins import core_version, registry
from .tensor import Tensor

PROG = "ckpt-core"
MAX_OPTION_CHARS = 10_000  # an option value longer than this is a mistake (a layer map of 1000 layers fits)
MAX_OPTION_DEPTH = 16  # brackets nested deeper than this: the same
INT_LIMIT = 2 ** 63  # option integers fit in 64 bits (sizes, ranks, seeds, steps)

DESCRIPTION = """\
Move model checkpoints between training layouts: find out what a checkpoint is, read its
hyper-parameters and training state, convert it to any installed format (nothing dropped
unless you say so, nothing half-written), compare two checkpoints, and manage the
checkpoints of a training run. Formats come from plugins (see `ckpt-core plugins`)."""

EPILOG = """\
examples:
  ckpt-core detect out/ckpt.pt                     which format is this, and why
  ckpt-core inspect model.safetensors              family, hyper-parameters, tensors, train state
  ckpt-core inspect out/canon --json               the same facts as one JSON document
  ckpt-core convert model.safetensors out/canon --to canonical
  ckpt-core convert out/canon merged.safetensors --to safetensors --merge-adapters
  ckpt-core convert ckpt.pt weights.safetensors --to safetensors --allow-loss train_state
  ckpt-core diff model.safetensors out/canon       exit 0 when identical, 1 when not
  ckpt-core diff a.safetensors b.safetensors --atol 1e-3
  ckpt-core plugins                                installed plugins, formats and capabilities
  ckpt-core ls runs/exp1                           the checkpoints of a training run
  ckpt-core latest runs/exp1                       path of the newest complete checkpoint
  ckpt-core prune runs/exp1 --keep 3 --dry-run     what keeping the newest 3 would delete

`ckpt-core COMMAND --help` explains each command. --json, --quiet and --debug go before
or after the command.

exit codes:
  0    success (diff: identical)
  1    diff: the checkpoints differ
  2    usage error: bad arguments or options
  3    not found: no such file, directory or checkpoint
  4    unknown format: no installed format reads the input, or --to/--from names none
  5    corrupt input: bad header, truncated data, inconsistent shapes
  6    unsafe input: would run code from a pickle, or names a file outside its directory
  7    lossy conversion refused: nothing written; the message names the flag that allows it
  8    destination exists: pass --overwrite to replace it
  9    plugin error: a plugin failed unexpectedly (a bug in the plugin)
  10   internal error: a bug in ckpt-core (run with --debug and report the traceback)
  11   disk full: no space left on the destination's device; nothing was written
  12   destination is source: DST is SRC, holds it, lies inside it, or is a file the
       read uses; nothing was written
  130  interrupted"""

DETECT_EPILOG = """\
Every installed format says whether it recognises PATH (reading names, headers and small
JSON only), with a confidence from 0 to 1 and a reason; the most confident comes first and
is what the other commands use unless given --format/--from. Exits 4 when none does.

examples:
  ckpt-core detect model.safetensors
  ckpt-core detect out/ckpt.pt --json"""

INSPECT_EPILOG = """\
Reads headers and metadata only, never tensor data (but a 0-d best metric): fast at any size.
Hyper-parameters combine the checkpoint's own with those its family's schema derives from
tensor shapes. Tied names show as "-> target"; LoRA adapters show their rank, alpha and
scale beside their base tensor.

examples:
  ckpt-core inspect model.safetensors
  ckpt-core inspect out/ckpt.pt --format nanogpt --limit 0
  ckpt-core inspect runs/exp1 --option step=200
  ckpt-core inspect out/canon --json | jq .train_state"""

CONVERT_EPILOG = f"""\
SRC is read in its detected format (or --from), DST written in --to. The write is atomic:
DST appears complete or not at all, SRC is never changed, and an existing DST is kept
unless --overwrite. A conversion that would drop something the target cannot hold
(adapters, training state, KV sharing, ...) is refused before anything is written; the
error names the flag that allows it.

Option values are read as JSON, else as a Python literal, else as a plain string:
  --option max_shard_size=2GB       the string "2GB"
  --option verify=true              true
  --option 'layer_map={{12: 11}}'     the map {{12: 11}} (int keys, YAML style)

--allow-loss takes: {", ".join(losses.ALLOWABLE)}.

examples:
  ckpt-core convert model.safetensors out/canon --to canonical
  ckpt-core convert out/canon big --to safetensors --option max_shard_size=2GB
  ckpt-core convert lora.pt merged.safetensors --to safetensors --merge-adapters
  ckpt-core convert ckpt.pt weights.safetensors --to safetensors --allow-loss train_state
  ckpt-core convert model.safetensors half.safetensors --to safetensors --cast F32=BF16"""

DIFF_EPILOG = """\
Compares every tensor under its canonical name, across formats (a tie on one side equals
two copies on the other). Exact, bit for bit, by default; with --atol/--rtol float tensors
match when |a - b| <= atol + rtol * |b|. Exits 0 when identical, 1 when not.

examples:
  ckpt-core diff model.safetensors out/canon
  ckpt-core diff a.safetensors b.safetensors --atol 1e-3 --verbose
  ckpt-core diff ckpt.pt out/canon --json"""

PLUGINS_EPILOG = """\
Lists the built-in formats and every plugin installed under the entry-point group
`ckpt_core`, each with its distribution, version, formats (capabilities, families,
options) and model families. A plugin that failed to load is listed with its error.

examples:
  ckpt-core plugins
  ckpt-core plugins --json"""

LS_EPILOG = """\
Lists a training run's checkpoints, oldest step first, as the format that lays out the
run directory finds them (or --format). Incomplete ones (an interrupted save) say why.
The PRUNE column says which `ckpt-core prune` would delete: keeping the run's own
retention (moshi's num_ckpt_keep in args.yaml), or --keep N ("-" when neither is known).

examples:
  ckpt-core ls runs/exp1
  ckpt-core ls runs/exp1 --keep 2
  ckpt-core ls runs/exp1 --json"""

LATEST_EPILOG = """\
Prints the path of the newest complete checkpoint (never an interrupted save). Exits 3
when there is none.

examples:
  ckpt-core latest runs/exp1
  ckpt-core inspect "$(ckpt-core latest runs/exp1)\""""

PRUNE_EPILOG = """\
Deletes all but the newest N complete checkpoints; without --keep, N is the run's own
retention where its format records one (moshi: num_ckpt_keep in args.yaml). Never
deletes the newest complete one, one tagged best, an incomplete one (it may be a save in
progress), or anything outside RUN_DIR (a linked checkpoint or folder is skipped with a
warning). Also removes what killed prunes, and writers killed on this host, left behind.

examples:
  ckpt-core prune runs/exp1 --keep 3 --dry-run
  ckpt-core prune runs/exp1 --keep 3
  ckpt-core prune runs/moshi-run"""


def main(argv: list[str] | None = None) -> None:
    """Run the command; always ends with SystemExit carrying the exit code."""
    args = build_parser().parse_args(argv)
    # a name or value that is not valid Unicode (a lone surrogate) prints escaped, never half a table
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    raise SystemExit(run(args))


def run(args: argparse.Namespace) -> int:
    """Call the command's function; turn every failure into one line and an exit code."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CkptWarning)
            code = args.func(args) or 0
        sys.stdout.flush()
        _print_warnings(args, caught)
        return code
    except CkptError as e:
        return _fail(args, f"error: {e}", e.exit_code)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:
        hint = "" if args.debug else " (run with --debug for the traceback)"
        return _fail(args, f"internal error: {type(e).__name__}: {e}{hint}", 10)


def _print_warnings(args: argparse.Namespace, caught: list[warnings.WarningMessage]) -> None:
    """Each distinct CkptWarning as one ``warning:`` line on stderr (others re-raised as usual)."""
    seen = set()
    for w in caught:
        if not issubclass(w.category, CkptWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        elif str(w.message) not in seen and not args.quiet:
            seen.add(str(w.message))
            print(f"{PROG}: warning: {w.message}".replace("\n", " "), file=sys.stderr)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if args.debug:
        traceback.print_exc()
    print(f"{PROG}: {message}".replace("\n", " "), file=sys.stderr)
    return code


# -- the parser --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (what is wrong, and where to read more)
    instead of the usage block before it; ``--help`` is unchanged."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)".replace("\n", " ") + "\n")


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"{PROG} {core_version()}")
    _add_global_flags(parser, default=False)
    common = _Parser(add_help=False)
    _add_global_flags(common, default=argparse.SUPPRESS)  # given after the command: overrides, never resets
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, summary, epilog):
        p = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                                epilog=epilog, parents=[common], formatter_class=raw)
        p.set_defaults(func=func)
        return p

    p = command("detect", cmd_detect, "which installed format a checkpoint is in, and why", DETECT_EPILOG)
    p.add_argument("path", metavar="PATH", help="a checkpoint file or directory")

    p = command("inspect", cmd_inspect, "family, hyper-parameters, tensors and training state of a checkpoint", INSPECT_EPILOG)
    p.add_argument("path", metavar="PATH", help="a checkpoint file or directory")
    p.add_argument("--format", metavar="F", help="read as format F instead of the detected one")
    p.add_argument("--limit", metavar="N", type=int, default=30, help="rows of the tensor table (default 30; 0: all; --json lists all)")
    p.add_argument("--option", "-o", action="append", default=[], type=_option, metavar="KEY=VALUE",
                   help="a reader option of the format (repeatable; see `ckpt-core plugins`), as step=300 or verify=true")

    p = command("convert", cmd_convert, "convert a checkpoint to another format", CONVERT_EPILOG)
    p.add_argument("src", metavar="SRC", help="the checkpoint to read")
    p.add_argument("dst", metavar="DST", help="where to write (must not exist unless --overwrite)")
    p.add_argument("--to", required=True, metavar="FORMAT", help="format to write (see `ckpt-core plugins`)")
    p.add_argument("--from", dest="from_format", metavar="FORMAT", help="format of SRC, if not the detected one")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--option", "-o", action="append", default=[], type=_option, metavar="KEY=VALUE",
                   help="a reader or writer option (repeatable; see `ckpt-core plugins` for each format's options)")
    p.add_argument("--merge-adapters", action="store_true", help="merge LoRA adapters into their weights (computes in float32)")
    p.add_argument("--allow-loss", action="append", default=[], choices=losses.ALLOWABLE, metavar="KIND",
                   help="allow dropping KIND, which the target cannot hold (repeatable)")
    p.add_argument("--cast", action="append", default=[], type=_cast, metavar="SRC=DST",
                   help="cast tensors of dtype SRC to DST, for example F64=F32 (repeatable)")

    p = command("diff", cmd_diff, "compare two checkpoints tensor by tensor, in any formats", DIFF_EPILOG)
    p.add_argument("a", metavar="A", help="a checkpoint")
    p.add_argument("b", metavar="B", help="another checkpoint")
    p.add_argument("--atol", type=float, default=0.0, metavar="X", help="absolute tolerance for float tensors (default 0: exact)")
    p.add_argument("--rtol", type=float, default=0.0, metavar="Y", help="relative tolerance for float tensors (default 0: exact)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every tensor, not only those that differ")

    command("plugins", cmd_plugins, "installed plugins, their formats, capabilities and families", PLUGINS_EPILOG)

    def run_dir_command(name, func, summary, epilog):
        p = command(name, func, summary, epilog)
        p.add_argument("run_dir", metavar="RUN_DIR", help="a training run's checkpoint directory")
        p.add_argument("--format", metavar="F", help="the run directory's format, if not the detected one")
        return p

    p = run_dir_command("ls", cmd_ls, "list the checkpoints of a training run directory", LS_EPILOG)
    p.add_argument("--keep", type=int, metavar="N", help="mark what `prune --keep N` would delete (default: the run's own retention, if it records one)")
    run_dir_command("latest", cmd_latest, "print the path of a run directory's newest complete checkpoint", LATEST_EPILOG)
    p = run_dir_command("prune", cmd_prune, "delete all but the newest N complete checkpoints of a run directory", PRUNE_EPILOG)
    p.add_argument("--keep", type=int, metavar="N",
                   help="how many of the newest complete checkpoints to keep (default: the run's own retention, such as moshi's num_ckpt_keep)")
    p.add_argument("--dry-run", action="store_true", help="print what would be deleted; delete nothing")
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--json", action="store_true", default=default, help="print the facts as one JSON document on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bar and no success messages")
    parser.add_argument("--debug", action="store_true", default=default, help="show the Python traceback of an error")


def parse_value(text: str) -> Any:
    """An option value: JSON, else a Python literal (``{12: 11}``), else the plain string.

    ValueError for a value past the bounds no real option comes near: longer than
    ``MAX_OPTION_CHARS``, brackets nested deeper than ``MAX_OPTION_DEPTH``, an integer
    that does not fit in 64 bits (``INT_LIMIT``).
    """
    if len(text) > MAX_OPTION_CHARS:
        raise ValueError(f"the value is {len(text):,} characters long, more than {MAX_OPTION_CHARS:,}")
    depth = deepest = 0
    for c in text:
        depth += (c in "[{(") - (c in "]})")
        deepest = max(deepest, depth)
    if deepest > MAX_OPTION_DEPTH:
        raise ValueError(f"the value nests brackets {deepest} deep, more than {MAX_OPTION_DEPTH}")
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
            if "integer string conversion" in str(e) or re.fullmatch(r"\s*[-+]?\d+\s*", text):
                raise ValueError(f"an integer does not fit in 64 bits (at most {INT_LIMIT - 1})") from None
            continue
        _check_integers(value)
        return value
    return text


def _check_integers(value: Any) -> None:
    """ValueError if an integer in ``value`` (a parsed option) does not fit in 64 bits."""
    if isinstance(value, dict):
        for item in (*value.keys(), *value.values()):
            _check_integers(item)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            _check_integers(item)
    elif isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
        raise ValueError(f"the integer {str(value)[:12]}... does not fit in 64 bits (at most {INT_LIMIT - 1})")


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text[:80]!r}")
    try:
        return key.strip(), parse_value(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"option {key.strip()[:80]}: {e}") from None


def _cast(text: str) -> tuple[str, str]:
    src, sep, dst = text.partition("=")
    if not (sep and src.strip() and dst.strip()):
        raise argparse.ArgumentTypeError(f"expected SRC=DST dtypes such as F64=F32, got {text!r}")
    return src.strip().upper(), dst.strip().upper()


# -- commands ----------------------------------------------------------------------------


def cmd_detect(args) -> None:
    found = api.detect(args.path)
    if not found:
        installed = ", ".join(sorted(registry().formats))
        raise UnknownFormat(f"{args.path}: no installed format recognises it (installed: {installed}; see `ckpt-core plugins`)")
    if args.json:
        return _emit({"path": args.path, "detections": [
            {"format": d.format, "confidence": d.confidence, "reason": d.reason} for d in found]})
    _table(["FORMAT", "CONFIDENCE", "REASON"], [[d.format, f"{d.confidence:.2f}", d.reason] for d in found])


def cmd_inspect(args) -> None:
    path = Path(args.path)
    name = api.resolve_format(path, args.format)
    ck = api.load(path, name, dict(args.option))
    ts = ck.train_state if ck.train_state is not None else api.train_state(path, name)
    facts = {"path": args.path, "format": name, **inspect_facts(ck, ts)}
    if args.json:
        return _emit(facts)
    counts = facts["counts"]
    _pairs([
        ("path", facts["path"]),
        ("format", facts["format"]),
        ("family", facts["family"]),
        ("tensors", f"{counts['tensors'] - counts['absent']} stored, {_count(counts['tied'], 'tied name')}, "
                    f"{_count(counts['adapters'], 'adapter')}"
                    + (f", {counts['absent']} absent (adapters without their base)" if counts["absent"] else "")),
        ("parameters", f"{counts['parameters']:,}" + (f" (+ {counts['adapter_parameters']:,} in adapters)" if counts["adapters"] else "")),
        ("size", _size(counts["bytes"])),
        ("dtypes", ", ".join(f"{d} {_count(v['tensors'], 'tensor')} ({_size(v['bytes'])})" for d, v in facts["dtypes"].items()) or "none"),
        ("ties", _first([f"{a} -> {t}" for a, t in facts["ties"].items()])),
        ("kv sharing", _first([f"{c} -> {p}" for c, p in facts["kv_sharing"].items()])),
        ("trainable", "not stated" if facts["trainable"] is None else _count(facts["trainable"], "tensor")),
        *([("ignored files", _first(facts["ignored"]))] if facts["ignored"] else []),
    ])
    print("hyper-parameters" + ("" if facts["params"] else "  none"))
    _pairs([(k, _text(v)) for k, v in facts["params"].items()], indent=2)
    state = facts["train_state"]
    print("train state" + ("" if state else "  none"))
    if state:
        opt = state["optimizer"]
        _pairs([
            ("step", _text(state["step"])),
            ("epoch", _text(state["epoch"])),
            ("best metric", _text(state["best_metric"])),
            ("metrics", ", ".join(state["metrics"]) or "none"),
            ("optimizer", "none" if opt is None else f"{opt['kind'] or '?'}, {_count(opt['parameters'], 'parameter')} with state, "
                                                     f"{'resumable' if opt['resumable'] else 'not resumable'}"),
        ], indent=2)
    rows = facts["tensors"] if args.limit <= 0 else facts["tensors"][:args.limit]
    print()
    _table(["NAME", "DTYPE", "SHAPE", "SIZE", "NOTE"], [_tensor_row(t) for t in rows])
    if len(rows) < len(facts["tensors"]):
        print(f"... {len(facts['tensors']) - len(rows)} more (--limit 0 shows all)")


def _first(items: list[str], shown: int = 3) -> str:
    """A short list in full; a long one as its first few and how many more (--json has all)."""
    if len(items) <= shown + 1:
        return ", ".join(items) or "none"
    return ", ".join(items[:shown]) + f" and {len(items) - shown} more (--json lists all)"


def inspect_facts(ck: Checkpoint, ts: TrainState | None) -> dict[str, Any]:
    """What ``inspect`` shows, as JSON-safe data; reads no tensor data (but a 0-d best metric)."""
    params = dict(ck.arch.params)
    family = registry().families.get(ck.arch.family)
    if family is not None:
        params = {**family.derive_params({n: ck.tensor(n).shape for n in ck.names()}), **params}
    stored = [*(t for t in ck.tensors.values() if not t.is_absent), *(m for ad in ck.adapters.values() for m in (ad.a, ad.b))]
    histogram: dict[str, dict[str, int]] = {}
    for t in stored:
        entry = histogram.setdefault(t.dtype, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += t.nbytes
    return {
        "family": ck.arch.family,
        "params": _plain(params),
        "counts": {
            "tensors": len(ck.tensors),
            "tied": len(ck.ties),
            "adapters": len(ck.adapters),
            "absent": len(ck.absent_names()),
            "parameters": sum(t.numel for t in ck.tensors.values()),
            "adapter_parameters": sum(ad.a.numel + ad.b.numel for ad in ck.adapters.values()),
            "bytes": ck.nbytes,
        },
        "dtypes": histogram,
        "tensors": [_tensor_facts(ck, name) for name in ck.names()],
        "ties": dict(ck.ties),
        "kv_sharing": {str(c): p for c, p in ck.kv_sharing.items()},
        "trainable": None if ck.trainable is None else len(ck.trainable),
        "train_state": None if ts is None else _state_facts(ts),
        "ignored": [str(name) for name in ck.layout.facts.get("ignored", [])],
    }


def _tensor_facts(ck: Checkpoint, name: str) -> dict[str, Any]:
    t = ck.tensor(name)
    ad = ck.adapters.get(name)
    return {
        "name": name,
        "dtype": t.dtype,
        "shape": list(t.shape),
        "bytes": 0 if name in ck.ties or t.is_absent else t.nbytes,
        "tied_to": ck.ties.get(name),
        "absent": t.is_absent,
        "adapter": None if ad is None else {"rank": ad.rank, "alpha": ad.alpha, "scale": ad.scale,
                                            "scaling": ad.scaling, "kind": ad.kind},
    }


def _tensor_row(t: dict[str, Any]) -> list[str]:
    notes = []
    if t["tied_to"]:
        notes.append(f"-> {t['tied_to']}")
    if t["adapter"]:
        ad = t["adapter"]
        notes.append(f"lora rank {ad['rank']}, alpha {ad['alpha']:g}, scale {ad['scale']:g}")
    if t["absent"]:
        notes.append("absent (base not in this checkpoint)")
    size = "-" if t["tied_to"] or t["absent"] else _size(t["bytes"])
    return [t["name"], t["dtype"], "[" + ", ".join(map(str, t["shape"])) + "]", size, "; ".join(notes)]


def _state_facts(ts: TrainState) -> dict[str, Any]:
    best = ts.best_metric
    opt = ts.optimizer
    return {
        "step": _plain(ts.step),
        "epoch": _plain(ts.epoch),
        "best_metric": best.to_float32().item() if isinstance(best, Tensor) and best.shape == () else _plain(best),
        "metrics": [str(k) for k in ts.metrics],
        "optimizer": None if opt is None else {"kind": opt.kind, "parameters": len(opt.param_state), "resumable": opt.resumable},
    }


def cmd_convert(args) -> None:
    written = api.convert(args.src, args.dst, args.to, dict(args.option), from_format=args.from_format,
                          overwrite=args.overwrite, allow_loss=args.allow_loss, merge_adapters=args.merge_adapters,
                          cast=dict(args.cast), show_progress=not args.quiet)
    facts = {"path": args.dst, "format": args.to, "tensors": len(written.tensors), "bytes": _disk_usage(Path(args.dst))}
    if args.json:
        _emit(facts)
    elif not args.quiet:
        print(f"wrote {args.dst} ({args.to}, {facts['tensors']} tensors, {_size(facts['bytes'])})")


def _disk_usage(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def cmd_diff(args) -> int:
    report = api.diff(args.a, args.b, args.atol, args.rtol)
    rows = [r for r in report.tensors if args.verbose or r.status != "same"]
    if args.json:
        _emit({"identical": report.identical, "counts": report.counts(), "other": report.other,
               "tensors": [attrs.asdict(r) for r in rows]})
    else:
        total = len(report.tensors)
        how = "bit for bit" if args.atol == 0 and args.rtol == 0 else f"within atol {args.atol:g}, rtol {args.rtol:g}"
        if report.identical:
            print(f"identical: {total} tensors, {how}")
        else:
            counts = ", ".join(f"{n} {status}" for status, n in report.counts().items())
            print(f"different: {total - report.counts().get('same', 0)} of {total} tensors differ {how} ({counts})")
            for line in report.other:
                print(line)
        if rows:
            _table(["NAME", "STATUS", "DETAIL"], [[r.name, r.status, r.detail] for r in rows])
    return 0 if report.identical else 1


def cmd_plugins(args) -> None:
    reg = registry()
    plugins = [{
        "name": p.name,
        "distribution": p.distribution,
        "version": p.version,
        "formats": [_format_facts(reg.formats[f]) for f in p.formats],
        "families": [{"name": f, "description": reg.families[f].description} for f in p.families],
        "error": p.error or None,
    } for p in reg.plugins]
    if args.json:
        return _emit({"plugins": plugins})
    for p in plugins:
        print(f"{p['name']}  ({p['distribution']} {p['version']})")
        if p["error"]:
            print(f"  FAILED TO LOAD: {p['error']}")
        for f in p["formats"]:
            print(f"  format {f['name']}: {f['description']}")
            _pairs([
                ("capabilities", ", ".join(f["capabilities"]) or "none"),
                ("families", "any" if f["families"] == ["*"] else ", ".join(f["families"])),
                ("dtypes", _dtype_list(set(f["dtypes"]))),
                ("files", ", ".join(f["patterns"]) or "-"),
                ("run dirs", "yes" if f["run_dirs"] else "no"),
                *[("option", f"{k}: {v}") for k, v in f["options"].items()],
            ], indent=4)
        for fam in p["families"]:
            print(f"  family {fam['name']}: {fam['description']}")


def _dtype_list(names: set[str]) -> str:
    if names == ALL_DTYPES:
        return "all"
    if names == STANDARD_DTYPES:
        return "all but C64"
    return ", ".join(sorted(names))


def _format_facts(spec: FormatSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "description": spec.description,
        "capabilities": sorted(spec.capabilities),
        "families": list(spec.families),
        "dtypes": sorted(spec.dtypes),
        "patterns": list(spec.patterns),
        "options": dict(spec.options),
        "run_dirs": spec.run_dirs,
    }


def cmd_ls(args) -> None:
    format, entries = api.list_checkpoints(args.run_dir, args.format)
    keep = args.keep if args.keep is not None else api.retention(args.run_dir, format)
    doomed = {e.path for e in api.prune(args.run_dir, keep, format, dry_run=True)} if keep is not None else None
    if args.json:
        return _emit({"run_dir": args.run_dir, "format": format, "keep": keep,
                      "checkpoints": [{**_entry_facts(e), "pruned": None if doomed is None else e.path in doomed}
                                      for e in entries]})
    complete = sum(e.complete for e in entries)
    kept = f", prune keeps {keep}" if keep is not None else ""
    print(f"{args.run_dir}: {_count(len(entries), 'checkpoint')} ({complete} complete), format {format}{kept}")
    _table(["STEP", "STATE", "TAGS", "PRUNE", "PATH", "NOTE"],
           [[_text(e.step), "complete" if e.complete else "incomplete", ",".join(sorted(e.tags)),
             "-" if doomed is None else "delete" if e.path in doomed else "keep", str(e.path), e.note]
            for e in entries])


def cmd_latest(args) -> None:
    entry = api.latest(args.run_dir, args.format)
    if args.json:
        return _emit(_entry_facts(entry))
    print(entry.path)


def cmd_prune(args) -> None:
    doomed = api.prune(args.run_dir, args.keep, args.format, dry_run=args.dry_run)
    if args.json:
        return _emit({"dry_run": args.dry_run, "deleted": [_entry_facts(e) for e in doomed]})
    if args.quiet:
        return
    verb = "would delete" if args.dry_run else "deleted"
    for e in doomed:
        print(f"{verb} {e.path}")
    print(f"{verb} {_count(len(doomed), 'checkpoint')}" if doomed else "nothing to prune")


def _entry_facts(e: RunEntry) -> dict[str, Any]:
    return {"path": str(e.path), "step": e.step, "complete": e.complete, "tags": sorted(e.tags),
            "paths": [str(p) for p in e.paths], "note": e.note}


# -- output ------------------------------------------------------------------------------


def _emit(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def _pairs(pairs: list[tuple[str, str]], indent: int = 0) -> None:
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        print(" " * indent + f"{key.ljust(width)}  {value}".rstrip())


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _size(n: int) -> str:
    """Bytes as a human-readable size: 512 B, 1.5 KiB, 3.2 GiB."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"


def _text(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def _plain(value: Any) -> Any:
    """A JSON-safe form of a hyper-parameter or state value (a tensor by its description)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return repr(value)


if __name__ == "__main__":
    main()
