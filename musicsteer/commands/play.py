"""`musicsteer play`: stream to the sound card while generating, record, stop cleanly on Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from musicsteer.engine.errors import MusicsteerError, printable

from .live_controls import add_control_options, check_control_flags, load_session_config, open_controllers
from .options import (
    LIVE_STEERING,
    Need,
    add_generation_options,
    add_model_options,
    add_params,
    refuse_idle,
    resolve,
)

if TYPE_CHECKING:
    from musicsteer.controllers.config import SessionConfig
    from musicsteer.engine.generator import Generator
    from musicsteer.engine.session import SessionStats, StreamingSession


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("play", help="stream live to a sound device, with recording",
                            description="Generate token by token and play through a sound device as it is made.")
    add_model_options(parser)
    add_generation_options(parser)
    group = parser.add_argument_group("stream")
    add_params(group, "seconds", default_note="; default: until Ctrl-C")
    group.add_argument("--output-device", help="device name, index, or 'null' (no sound card; real-time clock)")
    group.add_argument("--record", help="record the session to this WAV file (its log: the same name, .jsonl)")
    group.add_argument("--record-dir", help="folder for takes started live (OSC record/start): names are taken "
                                            "in it and refused outside it; default: the working folder")
    group.add_argument("--overwrite", action="store_true",
                       help="a take may replace an existing WAV and log of the same name (else refused)")
    group.add_argument("--init-audio", help="audio file to continue from")
    add_params(group, "init_seconds", "buffer", "prebuffer", "blocksize", "when_slow")
    group.add_argument("--no-resample", action="store_true",
                       help="fail if the device refuses the model's rate, instead of resampling")
    group.add_argument("--codes-out", help="save the codes of what was played (codebooks, frames; the audio "
                                           "prompt's first) as .npy at the end")
    group.add_argument("--no-status", action="store_true", help="no live status line")
    add_control_options(parser)
    parser.set_defaults(run=run)


def status_line(stats: SessionStats, gen: Generator) -> str:
    values = gen.control.values
    mix = ",".join(f"{name}={weight:g}" for name, weight in values.mix.items()) or "-"
    rec = f"  rec {Path(stats.recording).name}" if stats.recording else ""
    if gen.meter is not None and gen.meter.latest:
        top = sorted(gen.meter.latest.items(), key=lambda item: -item[1])[:3]
        rec += "  meter " + " ".join(f"{label} {score:+.2f}" for label, score in top)
    if any(stats.control_counts.values()):  # a refused or clamped value is shown while it matters
        rec += "  " + refusals(stats)
    if stats.recording_error:
        rec += "  RECORDING FAILED"
    if stats.heard:
        rec += f"  knob→heard {stats.heard['median_ms']:.0f}/{stats.heard['p95_ms']:.0f} ms"
    return (f"step {stats.step:6d}  {stats.played_seconds:7.1f}s  rtf {stats.rtf:5.2f}  "
            f"buffer {stats.buffer_seconds:4.2f}s  {faults(stats)}  alpha {values.alpha:.2f}  steer {mix}{rec}")


def heard(stats: SessionStats) -> str:
    """`; knob→heard median N ms, p95 N ms (K changes)`: how soon a turned knob was heard, if one was."""
    if not stats.heard:
        return ""
    return (f"; knob→heard median {stats.heard['median_ms']:.0f} ms, p95 {stats.heard['p95_ms']:.0f} ms "
            f"({stats.heard['changes']:.0f} changes)")


def buffering(session: StreamingSession) -> str:
    """`lead 44 ms (auto), decoder chunk 1 frame, device block 256` or `buffer 1.00 s, decoder chunk 5
    frames, device block 1024`: what was held ahead of the DAC (auto: where its lead ended, or the fixed
    buffer it fell back to where decoding is too slow to pace finely), the decoder's chunk and the
    device's block (--blocksize auto: the one the sink chose), the rest of knob → heard."""
    chunk = session.decoder.config.chunk_frames
    frames = f"decoder chunk {chunk} frame{'s' if chunk != 1 else ''}, device block {session.blocksize}"
    if session.lead is not None:
        return f"lead {session.lead_seconds * 1000:.0f} ms (auto), {frames}"
    slow = " (auto: decoding too slow to pace finely here)" if session.slow_decode is not None else ""
    return f"buffer {session.lead_seconds:.2f} s{slow}, {frames}"


def faults(stats: SessionStats) -> str:
    """`underruns 0 (0.00 s), rebuffers 0, xruns 0, callback errors 0`: every way the sound could break."""
    return (f"underruns {stats.underrun_events} ({stats.underrun_seconds:.2f} s), rebuffers {stats.rebuffers}, "
            f"xruns {stats.xruns}, callback errors {stats.callback_errors}"
            + (f", output device lost {stats.device_losses}x, back {stats.device_returns}x"
               if stats.device_losses else ""))


def surfaces_needs(args: argparse.Namespace, config: SessionConfig | None) -> tuple[tuple[Need, ...], dict]:
    """What steering, preset and take flags need in this session (options.refuse_idle's `steering` and
    `more`). With a live surface (OSC, MIDI in from --midi or the config, --web) the steering flags need
    a vectors file, since a mix may come later; without one they need --steer too, and --presets (recalled
    and saved live) names nothing. Takes start live only from OSC or the page: without both, --record-dir
    names nothing and --overwrite needs --record."""
    midi_in = args.midi is not None or (config is not None and config.midi is not None and config.midi.port is not None)
    if not args.no_osc or midi_in or args.web is not None:
        steering, more = (LIVE_STEERING,), {}
    else:
        steering = LIVE_STEERING, (("steer",), "--steer, or OSC, --midi or --web to set a mix live")
        more = {"presets": [((), "OSC, MIDI in or --web: presets are recalled and saved live")]}
    if not args.no_osc or args.web is not None:
        return steering, more
    return steering, {**more, "record_dir": [((), "OSC or --web: it is where takes started live go")],
                      "overwrite": [(("record",), "--record, or OSC or --web to start takes")]}


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from musicsteer.engine.files import writable_file
    from musicsteer.engine.params import check_stream
    from musicsteer.engine.session import StreamingSession, StreamOptions

    from .render import prompt_codes_from, sha256_of
    from .setup import attach_meter, generator_class, session_spec

    check_control_flags(args)
    config, defaults = load_session_config(args)
    defaults = refuse_idle(args, defaults, *surfaces_needs(args, config))
    resolve(args, defaults)
    if args.codes_out:
        writable_file(args.codes_out, "--codes-out")
    check_stream(args.buffer, args.prebuffer, args.blocksize)  # again with the model's rate, once it is loaded
    if args.init_audio and not Path(args.init_audio).is_file():
        raise MusicsteerError(f"init audio not found: {args.init_audio}")
    spec = session_spec(args)
    lm = spec.lm
    gen = generator_class(args, lm)(lm, spec.controls, spec.vectors, steer_rule=args.steer_rule,
                                    steer_both=args.steer_both, slew=args.slew)
    attach_meter(gen, args)
    prompt_codes = prompt_codes_from(lm, args.init_audio, args.init_seconds)
    init = None
    if args.init_audio:
        init = {"path": str(Path(args.init_audio).resolve()), "sha256": sha256_of(args.init_audio),
                "seconds": args.init_seconds}
    options = StreamOptions(seconds=args.seconds, output_device=args.output_device, buffer_seconds=args.buffer,
                            prebuffer_seconds=args.prebuffer, blocksize=args.blocksize, when_slow=args.when_slow,
                            record=args.record, record_dir=args.record_dir, overwrite=args.overwrite,
                            resample=not args.no_resample)
    # The output device and the record path are checked here, before anything is generated.
    session = StreamingSession(gen, options, prompt_codes, init_audio=init, keep_codes=bool(args.codes_out))
    with ExitStack() as controllers:
        for line in open_controllers(controllers, session, args, config):
            print(line, file=sys.stderr, flush=True)
        code = stream(session, gen, show_status=not args.no_status)
    if args.codes_out:
        codes = torch.stack(session.codes, dim=-1)
        if prompt_codes is not None:  # the same layout render writes: the prompt's frames first
            codes = torch.cat([prompt_codes[0].cpu(), codes], dim=-1)
        np.save(args.codes_out, codes.numpy())
    return code


def refusals(stats: SessionStats) -> str:
    """`refused 3 (bad_type 2, non_finite 1), clamped 1`: what the controls refused or brought into range."""
    counts = dict(stats.control_counts)
    clamped = counts.pop("clamped", 0)
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
    return f"refused {sum(counts.values())}" + (f" ({kinds})" if kinds else "") + f", clamped {clamped}"


def stream(session: StreamingSession, gen: Generator, show_status: bool = True) -> int:
    """Run the session with Ctrl-C / SIGTERM stopping it cleanly; print a summary line."""
    import signal

    from rich.console import Console
    from rich.live import Live

    from musicsteer.engine.events import Notice

    console = Console(stderr=True)

    def tell(event: object) -> None:  # any thread: rich's console serialises its output
        if isinstance(event, Notice):
            console.print(f"musicsteer: {event.level}: {printable(event.text)}", markup=False, highlight=False,
                          soft_wrap=True)  # one line, whatever the width: logs and tests read it whole

    for notice in session.notices:  # told before the session ran (a nearly full disk)
        tell(notice)
    session.listeners.add(tell)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: session.stop())
    live = Live(console=console, refresh_per_second=4, transient=True) if show_status and console.is_terminal else None
    last_print = [0.0]

    def on_status(stats: SessionStats) -> None:
        if live is not None:
            live.update(status_line(stats, gen))
        elif show_status and stats.elapsed_seconds - last_print[0] >= 5:
            last_print[0] = stats.elapsed_seconds
            print(status_line(stats, gen), file=sys.stderr, flush=True)

    if live is not None:
        live.start()
    try:
        stats = session.run(on_status)
    finally:
        if live is not None:
            live.stop()
    print(f"played {stats.played_seconds:.2f} s; generated {stats.generated_seconds:.2f} s at rtf {stats.rtf:.2f} "
          f"(generation {stats.generation_rtf:.2f}, decode {stats.decode_rtf:.2f}); {faults(stats)}; "
          f"{stats.callbacks} audio callbacks; {buffering(session)}; control values {refusals(stats)}{heard(stats)}",
          file=sys.stderr)
    code = 1 if stats.device_error else 0  # (said when it happened, as a notice)
    for take in session.takes:
        if take.failure:  # one line: what failed, and what is safe
            print(f"musicsteer: error: {printable(take.failure)}", file=sys.stderr)
            code = 1
        else:
            print(f"recorded {printable(take.path)} ({take.seconds:.2f} s)", file=sys.stderr)
    return code
