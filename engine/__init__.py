"""musicsteer.engine: loading, the token-by-token decoder, steering, streaming audio, recording.

It imports neither musicsteer.controllers nor musicsteer.probes: those put events on the engine's
control state (`ControlState.submit`: `session.control`) and read its files.
"""

__version__ = "0.3.0"
