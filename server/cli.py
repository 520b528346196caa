"""``nstudio``: the server's command line (``serve``, ``doctor``, ``keys``, ``models``, ``demo``).

Every ``serve`` flag can also come from an ``NSTUDIO_*`` environment variable (the flag wins).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

from addon.wire import protocol

from .config import EXECUTORS, PROTOCOL_MIN_KEEP, PROTOCOL_MIN_QUEUE, ServeConfig, default_store

log = logging.getLogger("server")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    """Run ``nstudio``; returns the process exit status."""
    parser = _parser()
    # The demo owns its options (tools.demo parses them), so they pass through untouched;
    # argparse.REMAINDER cannot do that when the first of them is an option such as --out.
    args, extra = parser.parse_known_args(argv)
    if args.command == "demo":
        args.demo_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    return args.run(args)


def _env(name: str, fallback):
    return os.environ.get(f"NSTUDIO_{name}", fallback)


def _env_flag(name: str) -> bool:
    return os.environ.get(f"NSTUDIO_{name}", "").strip().lower() in ("1", "true", "yes", "on")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nstudio", description="Neural Studio inference server")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the inference server")
    serve.add_argument("--bind", default=_env("BIND", protocol.DEFAULT_ENDPOINT),
                       help="ZeroMQ endpoint (NSTUDIO_BIND; default %(default)s)")
    serve.add_argument("--store", type=Path, default=_env("STORE", None),
                       help="folder for job records and results (NSTUDIO_STORE; default "
                            "$XDG_DATA_HOME/neural-studio)")
    serve.add_argument("--device", default=_env("DEVICE", "auto"),
                       help="auto, cpu, cuda or cuda:N (NSTUDIO_DEVICE; default %(default)s)")
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "info"),
                       choices=("debug", "info", "warning", "error"),
                       help="(NSTUDIO_LOG_LEVEL; default %(default)s)")
    serve.add_argument("--threads", type=int, default=_env("THREADS", "0"),
                       help="CPU threads for torch's operators; 0 = torch's default (one per "
                            "core). Fewer avoid spinning threads fighting Blender or other jobs "
                            "for shared cores (NSTUDIO_THREADS; default %(default)s)")
    serve.add_argument("--max-message-bytes", type=int,
                       default=_env("MAX_MESSAGE_BYTES", str(ServeConfig.max_message_bytes)),
                       help="largest message accepted (NSTUDIO_MAX_MESSAGE_BYTES; default "
                            "%(default)s)")
    serve.add_argument("--max-queue", type=int,
                       default=_env("MAX_QUEUE", str(PROTOCOL_MIN_QUEUE)),
                       help="waiting jobs before `busy` (NSTUDIO_MAX_QUEUE; default %(default)s)")
    serve.add_argument("--max-queue-bytes", type=int,
                       default=_env("MAX_QUEUE_BYTES", str(ServeConfig.max_queue_bytes)),
                       help="memory the waiting jobs may hold before `busy` "
                            "(NSTUDIO_MAX_QUEUE_BYTES; default %(default)s)")
    serve.add_argument("--max-unsent-bytes", type=int,
                       default=_env("MAX_UNSENT_BYTES", str(ServeConfig.max_unsent_bytes)),
                       help="memory replies waiting for slow readers may hold "
                            "(NSTUDIO_MAX_UNSENT_BYTES; default %(default)s)")
    serve.add_argument("--keep-results", type=int,
                       default=_env("KEEP_RESULTS", str(PROTOCOL_MIN_KEEP)),
                       help=f"kept results retained, at least {PROTOCOL_MIN_KEEP} "
                            "(NSTUDIO_KEEP_RESULTS; default %(default)s)")
    serve.add_argument("--keep-days", type=float,
                       default=_env("KEEP_DAYS", str(ServeConfig.keep_days)),
                       help="results beyond the newest --keep-results expire after this many "
                            "days (NSTUDIO_KEEP_DAYS; default %(default)s)")
    serve.add_argument("--store-budget", type=_byte_count,
                       default=_env("STORE_BUDGET", str(ServeConfig.store_budget)),
                       help="bytes stored results may take, e.g. 20G; beyond it the oldest "
                            "results outside the newest --keep-results expire "
                            "(NSTUDIO_STORE_BUDGET; default %(default)s)")
    serve.add_argument("--sweep-seconds", type=float,
                       default=_env("SWEEP_SECONDS", str(ServeConfig.sweep_seconds)),
                       help="retention sweep interval (NSTUDIO_SWEEP_SECONDS; default "
                            "%(default)s)")
    serve.add_argument("--heartbeat-seconds", type=float,
                       default=_env("HEARTBEAT_SECONDS", str(ServeConfig.heartbeat_seconds)),
                       help="ZeroMQ heartbeat interval (NSTUDIO_HEARTBEAT_SECONDS; default "
                            "%(default)s)")
    serve.add_argument("--curve-dir", type=Path, default=_env("CURVE_DIR", None),
                       help="turn on CURVE with the keys made by `nstudio keys` "
                            "(NSTUDIO_CURVE_DIR)")
    serve.add_argument("--pipelines", default=_env("PIPELINES", ""),
                       help="extra pipeline modules to load besides the built-in ones, comma "
                            "separated, e.g. mypkg.mypipeline (NSTUDIO_PIPELINES)")
    serve.add_argument("--insecure", action="store_true", default=_env_flag("INSECURE"),
                       help="allow a non-loopback bind without CURVE (NSTUDIO_INSECURE=1)")
    _models_dir_option(serve)
    serve.add_argument("--models-memory", type=float, default=_env("MODELS_MEMORY", "0"),
                       help="GiB the warm models may take together, least recently used out; "
                            "0 = 80%% of the GPU's memory or half the RAM (NSTUDIO_MODELS_MEMORY)")

    _executor_arguments(serve)
    serve.add_argument("--ray-actors", type=int, default=_env("RAY_ACTORS", "0"),
                       help="Ray worker actors; 0 = one per GPU of the cluster, or one CPU "
                            "actor where it has none (NSTUDIO_RAY_ACTORS; default %(default)s)")
    serve.set_defaults(run=_serve)

    doctor = commands.add_parser("doctor", help="report what this machine can run")
    _models_dir_option(doctor)
    _executor_arguments(doctor)
    doctor.set_defaults(run=_doctor)

    models = commands.add_parser("models", help="list, add or download models")
    models_commands = models.add_subparsers(dest="models_command")
    listing = models_commands.add_parser("list", help="models known here and each pipeline's")
    _models_dir_option(listing)
    listing.set_defaults(run=_models_list)
    add = models_commands.add_parser("add", help="name a local file or folder")
    add.add_argument("name", help="the name requests use (letters, digits, . _ + -)")
    add.add_argument("path", type=Path, help="a diffusers folder, a .safetensors file, ...")
    add.add_argument("--doc", default="", help="one line saying what it is")
    _models_dir_option(add)
    add.set_defaults(run=_models_add)
    pull = models_commands.add_parser(
        "pull", help="download a hub id into the local Hugging Face cache (the only download)")
    pull.add_argument("repo_id", help="e.g. stabilityai/stable-diffusion-xl-base-1.0")
    pull.add_argument("--revision", default=None)
    pull.add_argument("--include", action="append", default=None, metavar="PATTERN",
                      help="only files matching this glob (repeatable)")
    pull.add_argument("--quiet", action="store_true", help="no progress bars")
    pull.set_defaults(run=_models_pull)
    models.set_defaults(run=lambda args: (models.print_help(), EXIT_USAGE)[1])

    keys = commands.add_parser("keys", help="make CURVE key pairs for the server and a client")
    keys.add_argument("--out", type=Path, required=True, help="folder to write the keys to")
    keys.add_argument("--force", action="store_true",
                      help="replace keys that already exist there (clients holding the old "
                           "ones are locked out)")
    keys.set_defaults(run=_keys)

    demo = commands.add_parser(
        "demo", add_help=False, help="run the Neural Studio demo (tools.demo; --help for its options)"
    )
    demo.set_defaults(run=_demo)
    return parser


def _byte_count(text: str) -> int:
    """``1048576``, ``512M``, ``20G``, ``1.5T`` -> bytes (binary multiples)."""
    text = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    if text and text[-1] in "KMGT":
        scale = 2 ** (10 * ("KMGT".index(text[-1]) + 1))
        text = text[:-1]
    try:
        return int(float(text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (e.g. 20G)") from None


def _models_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, default=_env("MODELS_DIR", None),
                        help="the models folder: names from `nstudio models add` "
                             "(NSTUDIO_MODELS_DIR; default $XDG_DATA_HOME/neural-studio/models)")


def _executor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", default=_env("EXECUTOR", "local"), choices=EXECUTORS,
                        help="what runs jobs: local (a worker thread on --device) or ray (a "
                             "pool of Ray actors, one per GPU) (NSTUDIO_EXECUTOR; default "
                             "%(default)s)")
    parser.add_argument("--ray-address", default=_env("RAY_ADDRESS", ""),
                        help="with --executor ray: the Ray cluster to join (`ray start --head` "
                             "prints it; `auto` finds one on this machine); empty starts a "
                             "private Ray here (NSTUDIO_RAY_ADDRESS)")


def _fail(message: str) -> int:
    print(f"nstudio: {message}", file=sys.stderr)
    return EXIT_USAGE


# serve ---------------------------------------------------------------------------------------

def _serve(args) -> int:
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    config = ServeConfig(
        bind=args.bind, store=args.store or default_store(), device=args.device,
        log_level=args.log_level, max_message_bytes=args.max_message_bytes,
        max_queue=args.max_queue, keep_results=args.keep_results,
        keep_days=args.keep_days, store_budget=args.store_budget,
        max_queue_bytes=args.max_queue_bytes, max_unsent_bytes=args.max_unsent_bytes,
        sweep_seconds=args.sweep_seconds, curve_dir=args.curve_dir, insecure=args.insecure,
        heartbeat_seconds=args.heartbeat_seconds, models_dir=args.models_dir,
        models_budget_bytes=int(args.models_memory * 2**30),
        executor=args.executor, ray_address=args.ray_address, ray_actors=args.ray_actors,
    )
    problem = _check_config(config)
    if problem:
        return _fail(problem)
    if args.threads < 0:
        return _fail(f"--threads must be 0 (torch's default) or more, not {args.threads}")

    from . import device as devices
    from . import security

    curve = None
    if config.curve_dir is not None:
        try:
            curve = security.load_keys(config.curve_dir)
        except security.SecurityError as error:
            return _fail(str(error))
    elif not security.is_local(config.bind) and not config.insecure:
        return _fail(f"refusing to bind {config.bind} without security: it is not a loopback "
                     "or ipc endpoint. Pass --curve-dir DIR (keys from `nstudio keys --out "
                     "DIR`) or, on a trusted network only, --insecure.")
    try:
        if config.executor == "ray" and config.device.strip().lower() != "cpu":
            # The actors own the GPUs (Ray places them); this process needs none.
            device, device_info = "cpu", {"kind": "cpu"}
        else:
            device, device_info = devices.resolve(config.device)
    except devices.DeviceError as error:
        return _fail(str(error))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        Path(config.store).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return _fail(f"cannot create the store folder {config.store}: {error}")

    import zmq

    from pipelines.registry import MODULES, discover

    from .broker import Broker
    from .executors import ExecutorError
    from .store import StoreInUse

    extra = tuple(name.strip() for name in args.pipelines.split(",") if name.strip())
    pipelines, _ = discover(MODULES + extra)
    from .models import ModelRegistry

    models = ModelRegistry(config.models_dir, config.models_budget_bytes or None, device)
    log.info("models folder %s, budget %.1f GiB", models.models_dir, models.budget_bytes / 2**30)
    executor = None
    if config.executor == "ray":
        from .ray_executor import RayExecutor

        executor = RayExecutor(pipelines, MODULES + extra, address=config.ray_address,
                               actors=config.ray_actors, device=config.device,
                               log_level=config.log_level, log_format=LOG_FORMAT,
                               models_dir=str(config.models_dir) if config.models_dir else None,
                               models_budget_bytes=config.models_budget_bytes)
    broker = Broker(config, pipelines, device, device_info, _version(), curve, models, executor)
    try:
        broker.serve()
    except zmq.ZMQError as error:
        return _fail(f"cannot serve on {config.bind}: {error}")
    except StoreInUse as error:
        return _fail(str(error))
    except ExecutorError as error:
        return _fail(str(error))
    return 0


def _check_config(config: ServeConfig) -> str:
    if config.keep_results < PROTOCOL_MIN_KEEP:
        return (f"--keep-results must be at least {PROTOCOL_MIN_KEEP} (the protocol promises "
                f"that many kept results), not {config.keep_results}")
    if config.keep_days < 0 or config.store_budget < 0:
        return "--keep-days and --store-budget must not be negative"
    if config.max_queue < 1:
        return f"--max-queue must be at least 1, not {config.max_queue}"
    if config.max_queue_bytes < 1 or config.max_unsent_bytes < 1:
        return "--max-queue-bytes and --max-unsent-bytes must be positive"
    if config.max_message_bytes < 1024:
        return f"--max-message-bytes must be at least 1024, not {config.max_message_bytes}"
    if config.models_budget_bytes < 0:
        return "--models-memory must be 0 (automatic) or more"
    if config.sweep_seconds <= 0 or config.heartbeat_seconds <= 0:
        return "--sweep-seconds and --heartbeat-seconds must be positive"
    if config.ray_actors < 0:
        return f"--ray-actors must be 0 (one per GPU) or more, not {config.ray_actors}"
    if config.executor != "ray" and (config.ray_address or config.ray_actors):
        log.warning("--ray-address and --ray-actors are ignored without --executor ray")
    if config.max_queue < PROTOCOL_MIN_QUEUE:
        log.warning("--max-queue %d is below the %d the protocol promises clients",
                    config.max_queue, PROTOCOL_MIN_QUEUE)
    return ""


def _version() -> str:
    try:
        return importlib.metadata.version("neural-studio")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# doctor --------------------------------------------------------------------------------------

def _doctor(args) -> int:
    from pipelines.registry import discover

    from . import device as devices

    print(f"neural-studio {_version()}, Python {platform.python_version()} "
          f"({sys.executable})")
    try:
        import torch

        print(f"torch {torch.__version__}")
    except ImportError as error:
        print(f"torch: not installed ({error})")
    usable, reason = devices.cuda_status()
    print(f"CUDA: {'usable' if usable else 'not usable'} ({reason})")
    try:
        device, info = devices.resolve("auto")
        print(f"device (auto): {device} {info}")
    except devices.DeviceError as error:
        print(f"device (auto): {error}")
    _doctor_kernels()
    bpy = importlib.util.find_spec("bpy")
    print(f"bpy: {'found at ' + str(bpy.origin) if bpy else 'not found'}")
    from .models import ModelRegistry

    registry = ModelRegistry(args.models_dir, budget_bytes=1)
    pipelines, failures = discover()
    for name, pipeline in sorted(pipelines.items()):
        available, why = registry.probe(pipeline)
        print(f"pipeline {name}: {'available' if available else 'unavailable'}"
              + (f" ({why})" if why else ""))
    for module, why in sorted(failures.items()):
        print(f"pipeline module {module}: not loadable ({why})")
    if args.executor == "ray":
        from .ray_executor import cluster_report

        for line in cluster_report(args.ray_address or "auto"):
            print(line)
    else:
        print("executor: local (one worker thread on the device above)")
    print(f"models folder: {registry.models_dir}")
    _print_model_states(registry, pipelines)
    return 0


# models --------------------------------------------------------------------------------------

def _print_model_states(registry, pipelines: dict) -> None:
    """Each pipeline's declared models: where each default was found, or what is missing."""
    for name, pipeline in sorted(pipelines.items()):
        for spec, source, missing in registry.states(pipeline):
            choice = f" (requests may name another with params.{spec.param})" if spec.param else ""
            if source is not None:
                print(f"model {name}/{spec.key} {spec.default}: found ({source.origin}: "
                      f"{source.path or source.ref}){choice}")
            else:
                print(f"model {name}/{spec.key} {spec.default}: missing ({missing}){choice}")


def _models_list(args) -> int:
    from pipelines.registry import discover

    from .models import WHEEL_MODELS, ModelRegistry, hub_cache_dir, hub_cache_repos

    registry = ModelRegistry(args.models_dir, budget_bytes=1)
    names = registry.names()
    print(f"models folder: {registry.models_dir}")
    for name, entry in sorted(names.items()):
        state = "" if Path(entry["path"]).exists() else " (MISSING)"
        print(f"  {name}: {entry['path']}{state}" + (f"  {entry['doc']}" if entry.get("doc") else ""))
    for name in sorted(WHEEL_MODELS):
        found, where = registry._wheel_path(name)
        print(f"  {name}: {'wheel ' + str(where) if found else 'missing: ' + where}")
    repos = hub_cache_repos()
    print(f"hub cache: {hub_cache_dir()} ({len(repos)} models)")
    for repo in repos:
        print(f"  {repo}")
    pipelines, _ = discover()
    _print_model_states(registry, pipelines)
    return 0


def _models_add(args) -> int:
    from .models import ModelRegistry

    registry = ModelRegistry(args.models_dir, budget_bytes=1)
    try:
        target = registry.add(args.name, args.path, args.doc)
    except ValueError as error:
        return _fail(str(error))
    source = registry.resolve(args.name)
    print(f"{args.name}: {target} ({source.origin}; index {registry.index_path})")
    return 0


def _models_pull(args) -> int:
    from .models import pull

    try:
        path = pull(args.repo_id, args.revision, args.include, progress=not args.quiet)
    except RuntimeError as error:
        print(f"nstudio: {error}", file=sys.stderr)
        return 1
    print(f"{args.repo_id}: {path}")
    return 0


def _doctor_kernels() -> None:
    from pipelines.registry import kernel_backends

    try:
        backends = kernel_backends()
    except Exception as error:  # the kernels may be unfinished or broken: report, do not crash
        print(f"kernels: not usable ({type(error).__name__}: {error})")
        return
    for name, (ok, why) in backends.items():
        print(f"rasterizer backend {name}: {'usable' if ok else 'not usable'} ({why})")


# keys ----------------------------------------------------------------------------------------

def _keys(args) -> int:
    from . import security

    try:
        written = security.create_keys(args.out, force=args.force)
    except security.SecurityError as error:
        return _fail(str(error))
    except OSError as error:
        return _fail(f"cannot write keys to {args.out}: {error}")
    for name, path in written.items():
        print(f"{name}: {path}")
    print(f"serve with: nstudio serve --curve-dir {args.out} --bind tcp://0.0.0.0:5557")
    print("give clients server.key (public) and their own client.key/client.key_secret")
    return 0


# demo ----------------------------------------------------------------------------------------

def _demo(args) -> int:
    # The demos drive Blender (bpy) and live in tools/, outside the server's import graph
    # (DESIGN.md: server -> addon.wire, pipelines): they run as their own process.
    if importlib.util.find_spec("tools.demo") is None:
        return _fail("the demos are not installed (tools/demo.py is missing from this build)")
    return subprocess.call([sys.executable, "-m", "tools.demo", *args.demo_args])
