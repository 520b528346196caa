"""``nstudio``: the server's command line (``serve``, ``doctor``, ``keys``, ``demo``).

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
    serve.add_argument("--keep-results", type=int,
                       default=_env("KEEP_RESULTS", str(PROTOCOL_MIN_KEEP)),
                       help=f"kept results retained, at least {PROTOCOL_MIN_KEEP} "
                            "(NSTUDIO_KEEP_RESULTS; default %(default)s)")
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
    _executor_arguments(serve)
    serve.add_argument("--ray-actors", type=int, default=_env("RAY_ACTORS", "0"),
                       help="Ray worker actors; 0 = one per GPU of the cluster, or one CPU "
                            "actor where it has none (NSTUDIO_RAY_ACTORS; default %(default)s)")
    serve.set_defaults(run=_serve)

    doctor = commands.add_parser("doctor", help="report what this machine can run")
    _executor_arguments(doctor)
    doctor.set_defaults(run=_doctor)

    keys = commands.add_parser("keys", help="make CURVE key pairs for the server and a client")
    keys.add_argument("--out", type=Path, required=True, help="folder to write the keys to")
    keys.set_defaults(run=_keys)

    demo = commands.add_parser(
        "demo", add_help=False, help="run the Neural Studio demo (tools.demo; --help for its options)"
    )
    demo.set_defaults(run=_demo)
    return parser


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
        sweep_seconds=args.sweep_seconds, curve_dir=args.curve_dir, insecure=args.insecure,
        heartbeat_seconds=args.heartbeat_seconds, executor=args.executor,
        ray_address=args.ray_address, ray_actors=args.ray_actors,
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
    executor = None
    if config.executor == "ray":
        from .ray_executor import RayExecutor

        executor = RayExecutor(pipelines, MODULES + extra, address=config.ray_address,
                               actors=config.ray_actors, device=config.device,
                               log_level=config.log_level, log_format=LOG_FORMAT)
    broker = Broker(config, pipelines, device, device_info, _version(), curve, executor)
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
    if config.max_queue < 1:
        return f"--max-queue must be at least 1, not {config.max_queue}"
    if config.max_message_bytes < 1024:
        return f"--max-message-bytes must be at least 1024, not {config.max_message_bytes}"
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
    pipelines, failures = discover()
    for name, pipeline in sorted(pipelines.items()):
        try:
            available, why = pipeline.probe()
        except Exception as error:  # report a broken probe, do not crash the doctor
            available, why = False, f"probe failed: {type(error).__name__}: {error}"
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
        written = security.create_keys(args.out)
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
