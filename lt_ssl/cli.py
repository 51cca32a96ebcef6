"""The `lt-ssl` command: run a whole pipeline locally, or one stage as Argo calls it."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import traceback

from .errors import EXIT_UNEXPECTED, LtSslError
from .pipeline.plan import CONFIG_STAGES, OUTPUT_FLAGS, STAGE_NAMES

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def _split_overrides(items: list[str]) -> list[str]:
    """Argo passes all overrides as one parameter: split any item that holds several."""
    return [tok for item in items for tok in shlex.split(item)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lt-ssl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lt-ssl {__import__('lt_ssl').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the config's)")
    common.add_argument("--debug", action="store_true", help="show Python tracebacks")

    p = sub.add_parser("run", parents=[common], help="run the whole pipeline locally")
    p.add_argument("--config", required=True, help="YAML run config, e.g. configs/quickstart.yaml")
    p.add_argument("--run", default=None, help="run URI (file:///abs/path or s3://bucket/prefix); reuse one to resume")
    p.add_argument("--workers", type=int, default=None,
                   help="stage processes at once (independent stages, one expert per cluster), sharing the cores; "
                        "default: the cores (LT_SSL_THREADS or the CPU count), at most 4")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. cluster.k=4 imbalance=100")

    s = sub.add_parser("stage", parents=[common], help="run one stage under the stage contract")
    s.add_argument("name", choices=STAGE_NAMES)
    s.add_argument("--run", required=True, help="run URI: file:///abs/path/runs/<id> or s3://bucket/runs/<id>")
    first = "/".join(sorted(CONFIG_STAGES))
    s.add_argument("--cluster", type=int, default=None, help="cluster id (fan-out stages only: expert)")
    s.add_argument("--config", default=None, help=f"YAML run config ({first} stage only)")
    for flag, stages in OUTPUT_FLAGS.items():
        s.add_argument(flag, default=None, help=f"write the files Argo reads as output parameters here "
                                                f"({'/'.join(sorted(stages))} stage)")
    s.add_argument("overrides", nargs="*", help=f"key.sub=value overrides ({first} stage only)")

    from . import compare, experiment, methods, runs
    from .pipeline import submit

    for module in (runs, compare, submit, methods, experiment):  # each registers its parser with set_defaults(func=main)
        module.add_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from .pipeline.local import run

        if args.workers is not None and args.workers < 1:
            raise LtSslError(f"--workers must be >= 1, got {args.workers}")
        return run(args.config, _split_overrides(args.overrides), args.run, args.workers, args.device, args.debug)
    if args.command == "stage":
        from .config import load_config
        from .pipeline.stages import run_stage
        from .store import open_store

        overrides = _split_overrides(args.overrides)
        if args.name not in CONFIG_STAGES and (args.config or overrides):
            raise LtSslError(f"stage {args.name} reads the run's config.yaml; --config and overrides go to stage "
                             f"{'/'.join(sorted(CONFIG_STAGES))}")
        cfg = load_config(args.config, overrides) if args.name in CONFIG_STAGES else None
        given = {flag: getattr(args, _dest(flag)) for flag in OUTPUT_FLAGS if getattr(args, _dest(flag))}
        wrong = [flag for flag in given if args.name not in OUTPUT_FLAGS[flag]]
        if wrong:
            raise LtSslError(f"{wrong[0]} is for stage {'/'.join(sorted(OUTPUT_FLAGS[wrong[0]]))}, not {args.name}")
        run_stage(args.name, open_store(args.run), cfg, cluster=args.cluster, device=args.device,
                  output_path=next(iter(given.values()), None))
        return 0
    return args.func(args)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Like parse_args, but key=value overrides may also follow options (`stage prepare --run U k=v`),
    which argparse alone refuses once a subcommand has a positional before its options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    extra = [tok for tok in extra if tok.strip()]  # Argo's empty `overrides` parameter is one "" argument
    stray = [tok for tok in extra if not _OVERRIDE.match(tok)]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = os.environ.get("LT_SSL_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        return _dispatch(args)
    except LtSslError as e:
        if args.debug:
            traceback.print_exc()
        print(f"lt-ssl: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"lt-ssl: unexpected error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    raise SystemExit(main())
