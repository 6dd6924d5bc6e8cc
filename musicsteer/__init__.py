"""musicsteer: realtime streaming activation steering for MusicGen."""

__version__ = "0.1.0"
