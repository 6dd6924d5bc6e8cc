"""Write examples/open-stage-control.json, an Open Stage Control layout, from the parameter table.

    python examples/make_open_stage_control.py --labels classical,electronic,jazz,rock > my-layout.json

Every fader, knob and switch is a row of engine/params.py on its own address, so the layout follows
the engine both ways: run `musicsteer play --osc-feedback 127.0.0.1:8080` and start Open Stage
Control with `--send 127.0.0.1:9000 --osc-port 8080`; whatever moves a value (MIDI, the browser page,
a preset, automation, another surface) moves the widget on that address. tests/test_osc_feedback.py
checks the shipped file is what this script writes.
"""

from __future__ import annotations

import argparse
import json

from musicsteer.engine.params import LIVE

TARGET = "127.0.0.1:9000"
LABELS = ("classical", "electronic", "jazz", "rock")


def widget(kind: str, wid: str, address: str, top: int, left: int, width: int, height: int, **extra: object) -> dict:
    return {"type": kind, "id": wid, "label": wid.replace("_", " "), "address": address, "target": TARGET,
            "top": top, "left": left, "width": width, "height": height, "preArgs": "", "bypass": False, **extra}


def layout(labels: tuple[str, ...] = LABELS) -> dict:
    widgets, left = [], 20
    for row in LIVE.values():  # a fader per number with a span on a surface, from the table
        if row.span and row.kind in ("number", "whole"):
            widgets.append(widget("fader", row.name, f"/musicsteer/{row.osc[0]}", 20, left, 90, 260,
                                  range={"min": row.span[0], "max": row.span[1]}, default=row.default,
                                  step=1 if row.kind == "whole" else "", doubleTap=True, design="compact"))
            left += 110
    layer, site = LIVE["layer"], LIVE["site"]
    widgets.append(widget("knob", "layer", f"/musicsteer/{layer.osc[0]}", 20, left, 120, 120,
                          range={"min": 0, "max": 47}, step=1, default=18))
    widgets.append(widget("switch", "site", f"/musicsteer/{site.osc[0]}", 160, left, 120, 110,
                          values={choice: choice for choice in site.choices}))
    for i, label in enumerate(labels):  # steer at once, or morph over 4 s; the mix shows what plays
        widgets.append(widget("button", f"steer_{label}", "/musicsteer/steer", 320, 20 + 110 * i, 90, 60,
                              on=label, off=None, mode="tap"))
        widgets.append(widget("button", f"morph_{label}", "/musicsteer/morph", 400, 20 + 110 * i, 90, 60, on=None,
                              off=None, mode="tap", onValue=f"send('/musicsteer/morph', '{label}', 4.0)"))
    widgets.append(widget("text", "mix", f"/musicsteer/{LIVE['mix'].osc[0]}", 320, 20 + 110 * len(labels), 240, 140))
    widgets.append(widget("input", "prompt", f"/musicsteer/{LIVE['prompt'].osc[0]}", 480, 20, 420, 60))
    # A press (1) starts a new take-DATE-TIME.wav; the release (0) is ignored by the engine.
    widgets.append(widget("button", "record", "/musicsteer/record/start", 560, 20, 200, 60, on=1, off=0, mode="push"))
    widgets.append(widget("button", "stop_recording", "/musicsteer/record/stop", 560, 240, 200, 60, on=1, off=0,
                          mode="push"))
    widgets.append(widget("text", "status", "/musicsteer/status", 640, 20, 420, 60))
    return {"createdWith": "Open Stage Control", "version": "1.26.2", "type": "session",
            "content": {"type": "root", "id": "root", "address": "/root", "target": "", "tabs": [],
                        "widgets": widgets}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default=",".join(LABELS), help="the vectors file's labels, comma-separated")
    labels = tuple(label.strip() for label in parser.parse_args().labels.split(",") if label.strip())
    print(json.dumps(layout(labels), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
