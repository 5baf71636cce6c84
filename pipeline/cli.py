"""Command line: argument parsing only. One subcommand per stage (run by pipeline/runner.py) plus
the helpers: preset, import-expert, validate, infer, score, compare, stages."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from . import config
from .errors import PipelineError
from .stages import STAGES

log = logging.getLogger("pipeline")


VARIANTS = ("memory", "no_memory")


def _run_stage(name: str, args) -> int:
    from .runner import run_stage

    spec = STAGES[name]
    run_stage(name, args.params, args.log, getattr(args, spec.argument) if spec.argument else None)
    return 0


def _preset(args) -> int:
    before = config.flatten(config.read_yaml(args.params, "params file"))
    after = config.flatten(config.apply_preset(args.name, args.params))
    changed = [k for k in after if before.get(k) != after[k]]
    print(f"preset {args.name} applied to {args.params} (validated): {len(changed)} value(s) changed")
    for key in changed:
        print(f"  {key}: {before.get(key)!r} -> {after[key]!r}")
    return 0


def _import_expert(args) -> int:
    """Check that FILE is Wav2Lip's expert, then make it the expert through params.yaml (so both
    orchestrators see the change and re-run what depends on the expert)."""
    from pathlib import Path

    from .nets.expert import import_wav2lip

    path = Path(args.file).expanduser().resolve()
    if not path.is_file():
        raise PipelineError(f"{path} does not exist")
    import_wav2lip(path)  # raises with the reason when the layout differs
    config.update_params(
        args.params,
        {"sync_expert": {"pretrained": str(path)}, "preprocess": {"img_size": 96}},
        f"import-expert {path.name}",
    )
    print(
        f"{path} loads as Wav2Lip's SyncNet (strict); params.yaml now sets sync_expert.pretrained to it "
        f"(and preprocess.img_size to 96): run the pipeline to use it"
    )
    return 0


def _validate(args) -> int:
    config.load(args.params)
    print(f"{args.params}: valid")
    return 0


def _infer(args) -> int:
    from pathlib import Path

    from . import runtime
    from .infer import default_checkpoint, infer

    runtime.setup_logging(args.log)
    checkpoint = Path(args.checkpoint or default_checkpoint())
    if not checkpoint.is_file():  # before decoding anything
        raise PipelineError(
            f"--checkpoint {checkpoint}: generator checkpoint not found (train it with "
            f"train_generator, or run infer from the project's folder)"
        )
    summary = infer(Path(args.face), Path(args.audio), checkpoint, Path(args.output), batch=args.batch)
    line = (
        f"infer: {args.output}: {summary['frames']} frames ({summary['seconds_of_audio']} s) in "
        f"{summary['wall_seconds']} s, {summary['frames_per_second']} frames/s; "
        f"{summary['frames_without_face']} frames without a face copied through"
    )
    log.info(line)
    print(line)
    return 0


def _score(args) -> int:
    from .evaluate.score import render, score
    from .runtime import atomic_file

    rows, failures = score(args.videos, args.syncnet_v2, args.expert, args.faces, args.search)
    text = render(rows, failures, args.format)
    if args.output:
        with atomic_file(args.output) as tmp:
            tmp.write_text(text)
    print(text, end="")
    return 1 if failures else 0


def _compare(args) -> int:
    from .evaluate.compare import render, runs_table

    table, same = runs_table(args.experiment, args.stage, args.last)
    print(render(table, same, args.format), end="")
    return 0


def _stages(args) -> int:
    for spec in STAGES.values():
        print(f"{spec.name:10s} params: {', '.join(spec.params)}")
        print(f"{'':10s} code:   {', '.join(spec.all_code)}")
        print(f"{'':10s} {spec.summary}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="SyncTalkFace pipeline stages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for spec in STAGES.values():
        p = sub.add_parser(spec.name, help=spec.summary)
        p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
        p.add_argument("--log", default=None, help="also write the log to this file")
        if spec.argument == "shard":
            p.add_argument("--shard", type=int, required=True, help="the shard to process (one of preprocess.shards)")
        if spec.argument == "variant":
            p.add_argument(
                "--variant",
                required=True,
                choices=VARIANTS,
                help="memory (SyncTalkFace) or no_memory (the ablation); one of generator.variants",
            )
        p.set_defaults(func=lambda a, n=spec.name: _run_stage(n, a))
    p = sub.add_parser("preset", help="merge workflow/presets/NAME.yaml into params.yaml and validate")
    p.add_argument("name", help=f"one of: {', '.join(config.preset_names())}")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_preset)
    p = sub.add_parser("import-expert", help="use Wav2Lip's lipsync_expert.pth as the sync expert")
    p.add_argument("file", help="the checkpoint ({'state_dict': ...}, a 'module.' prefix is fine)")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_import_expert)
    p = sub.add_parser("validate", help="check params.yaml against the schema")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_validate)
    p = sub.add_parser("infer", help="lip-sync a face video or photo to a speech file (an mp4 out)")
    p.add_argument("--face", required=True, help="a video (any fps) or a still image with a face")
    p.add_argument("--audio", required=True, help="speech: wav/mp3/m4a or a video's audio track")
    p.add_argument(
        "--checkpoint", default=None, help="generator checkpoint (default models/generator/memory/generator.pt)"
    )
    p.add_argument("-o", "--output", required=True, help="the output .mp4")
    p.add_argument("--batch", type=_positive_int, default=32, help="frames generated per batch")
    p.add_argument("--log", default=None)
    p.set_defaults(func=_infer)
    p = sub.add_parser(
        "score",
        help="is a video in sync: the offset, LSE-D and LSE-C of its speaking face",
        description="Exit status: 0 every video scored, 1 one or more could not be (each is named), "
        "2 wrong usage. Offsets > 0: the audio lags the video (syncnet_python's sign is the opposite; "
        "both are printed).",
    )
    p.add_argument("videos", nargs="+", help="video files with a face and speech (any fps, any audio channels)")
    p.add_argument(
        "--syncnet-v2", default=None, help="syncnet_python's syncnet_v2.model (default: the project's expert)"
    )
    p.add_argument("--expert", default=None, help="the project's expert (default models/sync_expert/expert.pt)")
    p.add_argument("--faces", choices=("speaking", "all"), default="speaking", help="the speaking face, or every face")
    p.add_argument("--search", type=_positive_int, default=15, help="offsets searched: -N..N frames (default 15)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("-o", "--output", default=None, help="also write the results to this file")
    p.set_defaults(func=_score)
    p = sub.add_parser("compare", help="MLflow runs side by side: params that differ, final metrics")
    p.add_argument("--experiment", default=None, help="experiment name (default: every synctalkface-* experiment)")
    p.add_argument("--stage", default=None, help="only runs of this stage (e.g. train_generator)")
    p.add_argument("--last", type=_positive_int, default=6, help="the newest N runs (default 6)")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    p.set_defaults(func=_compare)
    p = sub.add_parser("stages", help="list the stages, the params and the code each depends on")
    p.set_defaults(func=_stages)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .train.loop import Preempted

        if isinstance(exc, Preempted):
            print(f"preempted: {exc}", file=sys.stderr)
            from . import runtime

            if exc.signum == signal.SIGUSR1 and runtime.slurm_requeue():
                print("requeued the SLURM job: it continues from the checkpoint when it starts again", file=sys.stderr)
            return 128 + exc.signum
        raise
