"""musicsteer: realtime streaming activation steering for MusicGen."""

from musicsteer.engine import __version__

__all__ = ["__version__"]
