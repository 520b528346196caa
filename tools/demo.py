"""The Neural Studio demo: scene -> capture -> live Gaussian training -> final shot, end to end.

``nstudio demo --out out/demo`` runs everything headless on this machine:

1. starts a real ``nstudio serve`` subprocess on a free loopback port (device cpu by default),
   with its result store under the output folder;
2. builds the procedural sample scene (`tools.sample_scene`) in Blender (bpy);
3. captures training and held-out views of the torus, sphere and cone (Cycles, small images);
4. trains Gaussians on the server (``splat.reconstruct``) through the add-on's own session,
   client and job manager, stepping the session's timer callback in a loop as Blender's event
   loop would; live partials update the Gaussian object while training; progress lines show
   step/total and the training PSNR;
5. the finished Gaussians are in the Gaussian object (a PLY copy is written too);
6. sets up the final shot (`addon.blender.final_shot`): the captured meshes are hidden from Blender's
   render, the Gaussians render on the server and are composited by depth with the ground and
   the cube, which stands partly in front of them; F12 renders the composited frame to a PNG;
7. saves the .blend and prints where everything is, how long each stage took and the
   held-out PSNR.

The server subprocess is stopped on success, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nstudio demo",
        description="Build a sample scene, train Gaussians on it through a local server and render "
                    "a composited final shot. Defaults finish in a few minutes on a 2-core CPU.")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default %(default)s)")
    parser.add_argument("--views", type=int, default=40, help="captured views, held-out ones included (default %(default)s)")
    parser.add_argument("--resolution", type=int, default=128, help="capture size in pixels, square (default %(default)s)")
    parser.add_argument("--samples", type=int, default=16, help="Cycles samples per captured view (default %(default)s)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default %(default)s)")
    parser.add_argument("--test-every", type=int, default=8, help="hold out every k-th view (default %(default)s)")
    parser.add_argument("--sh-degree", type=int, default=1, help="SH degree of the Gaussians (default %(default)s)")
    parser.add_argument("--max-gaussians", type=int, default=30_000, help="cap on the Gaussian count (default %(default)s)")
    parser.add_argument("--points", type=int, default=6000, help="initial surface points (default %(default)s)")
    parser.add_argument("--shot-width", type=int, default=320, help="final shot width (default %(default)s)")
    parser.add_argument("--shot-height", type=int, default=240, help="final shot height (default %(default)s)")
    parser.add_argument("--shot-samples", type=int, default=32, help="Cycles samples of the final shot (default %(default)s)")
    parser.add_argument("--frame", type=int, default=1, help="frame of the camera path to render (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="server device: cpu, cuda, cuda:N, auto (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sample scene seed (default %(default)s)")
    parser.add_argument("--server-timeout", type=float, default=120.0,
                        help="seconds to wait for the server to answer (default %(default)s)")
    args = parser.parse_args(argv)
    for name, low in (("views", 2), ("resolution", 16), ("samples", 1), ("steps", 1), ("test_every", 0),
                      ("max_gaussians", 1), ("points", 0), ("shot_width", 16), ("shot_height", 16),
                      ("shot_samples", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if not 0 <= args.sh_degree <= 3:
        parser.error(f"--sh-degree must be 0..3, got {args.sh_degree}")
    if args.test_every == 1:
        parser.error("--test-every 1 would hold out every view; use 0 (none) or >= 2")
    return args


# ---------------------------------------------------------------------------------------------
# Stage timing and output
# ---------------------------------------------------------------------------------------------


def say(text: str) -> None:
    """One line of demo output on stdout (a CLI: print is its interface)."""
    print(text, flush=True)


@dataclass
class Stages:
    """Wall time of each stage, in order."""

    seconds: dict = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        say(f"== {name}")
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = time.monotonic() - start
            say(f"   {name}: {self.seconds[name]:.1f} s")


# ---------------------------------------------------------------------------------------------
# The server subprocess
# ---------------------------------------------------------------------------------------------


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(endpoint: str, store: Path, device: str) -> list[str]:
    """``nstudio serve`` from this Python environment (the script next to the interpreter if present)."""
    script = Path(sys.executable).with_name("nstudio")
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "server"]
    return [*head, "serve", "--bind", endpoint, "--store", str(store), "--device", device]


class ServerProcess:
    """A ``nstudio serve`` subprocess; a context manager that always stops it.

    Args:
        endpoint: loopback endpoint to bind.
        store: result store folder.
        device: server device flag.
        log_path: file receiving the server's stdout and stderr.
    """

    def __init__(self, endpoint: str, store: Path, device: str, log_path: Path):
        self.argv = server_command(endpoint, store, device)
        self.endpoint = endpoint
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            # Its own session: a Ctrl-C in the terminal reaches the demo, which then stops the
            # server in order (instead of both dying at once mid-message).
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def returncode(self):
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGINT (the server's clean shutdown), then SIGTERM, then SIGKILL, each after a wait."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            process.send_signal(sig)
            try:
                process.wait(timeout_s)
                return
            except subprocess.TimeoutExpired:
                log.warning("server (pid %d) still running after %s", process.pid, sig.name)


# ---------------------------------------------------------------------------------------------
# Blender side
# ---------------------------------------------------------------------------------------------


def ensure_registered() -> None:
    """Register the add-on from this source tree (every feature module it lists)."""
    from addon import register as register_addon

    register_addon()


def ensure_unregistered() -> None:
    """Undo :func:`ensure_registered` (stops the session and its timer). Blender 4.2 crashes at
    interpreter exit while the add-on's classes and session are still registered."""
    from addon import unregister as unregister_addon

    unregister_addon()  # a no-op when nothing is registered


def connect(endpoint: str, server: ServerProcess, timeout_s: float):
    """Connect the add-on's session to the server and wait for its ``welcome``.

    Raises:
        RuntimeError: the server exited or did not answer in time (with its log's tail).
    """
    from addon.blender import session

    live = session.connect(session.SessionConfig(endpoint=endpoint))
    deadline = time.monotonic() + timeout_s
    while not live.client.connected:
        if server.returncode is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer from the server at {endpoint} within {timeout_s:g} s:\n{server.log_tail()}")
        session.timer_tick()
        time.sleep(0.05)
    return live


def drive_job(live, record, server: ServerProcess, report_every_s: float = 2.0, on_tick=None) -> None:
    """Run the session's timer callback until ``record`` has ended and its result is applied.

    This is what Blender's event loop does with the add-on's timer; headless, nothing else calls
    it. Progress lines go to stdout at most every ``report_every_s``.

    Args:
        live: the session.
        record: the job's `addon.core.jobs.JobRecord`.
        server: the server process (its exit ends the wait with an error).
        report_every_s: seconds between progress lines.
        on_tick: optional callable(record) after every tick (tests record live updates with it).

    Raises:
        RuntimeError: the job failed or the server exited.
    """
    from addon.blender import session

    last_report = 0.0
    last_step = -1
    while True:
        interval = session.timer_tick()
        if on_tick is not None:
            on_tick(record)
        now = time.monotonic()
        if record.step != last_step and (now - last_report >= report_every_s or record.step == record.total):
            if record.stage:
                say(f"   [{record.stage}] step {record.step}/{record.total}  {record.message}")
            last_report, last_step = now, record.step
        if record.finished and not live.manager.busy:
            break
        if server.returncode is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}:\n{server.log_tail()}")
        time.sleep(min(interval, 0.05))
    if record.state != "done":
        raise RuntimeError(f"{record.pipeline} job {record.id} {record.state}: {record.message}")


def _png_has_content(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    """Run the demo; returns the process exit status (0 success, 1 failure, 130 Ctrl-C).

    ``nstudio demo motion ...`` runs the motion demo (`tools.demo_motion`); ``nstudio demo
    [splat] ...`` this one.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "motion":
        from tools import demo_motion

        return demo_motion.main(argv[1:])
    if argv and argv[0] == "splat":
        argv = argv[1:]
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=str(out / "demo.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stages = Stages()
    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"
    server = ServerProcess(endpoint, out / "store", args.device, out / "server.log")
    t0 = time.monotonic()
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the server is stopped either way.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with server:
            try:
                summary = _run(args, out, endpoint, server, stages)
            finally:
                ensure_unregistered()
    except KeyboardInterrupt:
        say("interrupted: server stopped")
        return 130
    except Exception as exc:  # the CLI boundary: say what failed, where the logs are
        log.exception("demo failed")
        say(f"demo failed: {exc}")
        say(f"logs: {out / 'demo.log'}, {out / 'server.log'}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    total = time.monotonic() - t0
    say("")
    say("== summary")
    for name, seconds in stages.seconds.items():
        say(f"   {name:<28s} {seconds:7.1f} s")
    say(f"   {'total':<28s} {total:7.1f} s")
    for line in summary:
        say(f"   {line}")
    return 0


def _run(args, out: Path, endpoint: str, server: ServerProcess, stages: Stages) -> list[str]:
    import bpy

    from addon.blender import capture as capture_mod
    from addon.core import capture_layout
    from addon.blender import final_shot, splat_train
    from tools import sample_scene

    with stages.stage("start server"):
        say(f"   {' '.join(server.argv)}")
        ensure_registered()
        live = connect(endpoint, server, args.server_timeout)
        device = (live.client.welcome or {}).get("device", {})
        say(f"   connected to {endpoint} (device {device.get('kind', '?')})")

    with stages.stage("build scene"):
        bpy.ops.wm.read_homefile(app_template="", use_empty=True)
        scene = bpy.context.scene
        built = sample_scene.build_sample_scene(scene, seed=args.seed)
        scene.frame_set(args.frame)
        say(f"   {len(built.subjects)} subjects ({', '.join(o.name for o in built.subjects)}), "
            f"ground, foreground cube, camera path frames {scene.frame_start}-{scene.frame_end}")

    with stages.stage("capture views"):
        options = capture_mod.CaptureOptions(layout="hemisphere", count=args.views, width=args.resolution,
                                             height=args.resolution, engine="CYCLES", samples=args.samples,
                                             points=args.points, seed=args.seed)
        record, splats, captured = splat_train.start_reconstruction(
            bpy.context, built.subjects, options, steps=args.steps, sh_degree=args.sh_degree,
            test_every=args.test_every, max_gaussians=args.max_gaussians, name="Demo Splats")
        held_out = len(capture_layout.holdout_split(args.views, args.test_every)[1])
        say(f"   {args.views} views ({held_out} held out) at {args.resolution}x{args.resolution}, "
            f"{len(captured['points'])} initial points, rendered in {captured['seconds']:.1f} s")

    with stages.stage("reconstruct on server"):
        drive_job(live, record, server)
        say(f"   {splats.get(splat_train.PROP_PARTIALS, 0)} live partial updates applied to '{splats.name}'")

    with stages.stage("import gaussians"):
        # The result handler has already written the Gaussians into the object; read them back
        # (the same arrays a user's render or export uses) and keep a PLY copy next to the .blend.
        from addon.core.formats import ply
        from addon.blender.importers import gaussians as gaussian_objects

        gaussians = gaussian_objects.read_gaussians(splats)
        ply_path = out / "splats.ply"
        ply.write_ply(ply_path, gaussians)
        metrics = {key: splats.get(prop) for key, prop in splat_train.METRIC_PROPS.items()}
        say(f"   '{splats.name}': {len(gaussians['means'])} Gaussians; PLY {ply_path}")

    with stages.stage("final shot render"):
        reference_path, final_path = out / "reference.png", out / "final.png"
        scene.render.resolution_x, scene.render.resolution_y = args.shot_width, args.shot_height
        scene.render.resolution_percentage = 100
        scene.cycles.samples = args.shot_samples
        scene.render.image_settings.file_format = "PNG"
        scene.render.image_settings.color_mode = "RGB"
        # Blender's own render of the full scene, for comparison.
        splats.hide_render = True
        scene.render.use_compositing = False
        scene.render.filepath = str(reference_path)
        bpy.ops.render.render(write_still=True)
        # The final shot: the captured meshes are now represented by the Gaussians.
        splats.hide_render = False
        for obj in built.subjects:
            obj.hide_render = True
        companion = final_shot.setup_final_shot(scene)
        companion.nstudio_final_shot.endpoint = endpoint
        scene.render.filepath = str(final_path)
        bpy.ops.render.render(write_still=True)
        if not _png_has_content(final_path):
            raise RuntimeError(f"the final shot was not written to {final_path}")
        say(f"   final shot {final_path} ({args.shot_width}x{args.shot_height}); Blender-only reference {reference_path}")

    with stages.stage("save blend"):
        blend_path = out / "demo.blend"
        # The demo's server and its random port are gone once the demo ends: the saved file's
        # final shot uses the add-on's endpoint (preferences, $NSTUDIO_ENDPOINT or the default),
        # so reopening it and pressing F12 with `nstudio serve` running just works.
        companion.nstudio_final_shot.property_unset("endpoint")
        bpy.ops.wm.save_as_mainfile(filepath=str(blend_path))
        say(f"   {blend_path}")

    from addon.blender import session

    session.disconnect()
    return [
        f"held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} "
        f"({held_out} views never trained on)",
        f"{metrics['count']} Gaussians after {metrics['steps']} steps; server training time {metrics['seconds']:.1f} s",
        f"capture {captured['seconds']:.1f} s for {args.views} views",
        f"outputs: {final_path}, {reference_path}, {blend_path}, {ply_path}",
        f"server log: {server.log_path}; result store: {out / 'store'}",
    ]


if __name__ == "__main__":
    sys.exit(main())
