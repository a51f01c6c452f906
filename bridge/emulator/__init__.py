"""Local RunPod-compatible endpoint server; imports only bridge.errors, bridge.configfiles
and its own modules.

Start it with ``bridge emulator`` or, in-process, ``create_app(settings)`` /
``bridge.emulator.testing.running_emulator()``.
"""

from bridge.emulator.app import create_app, serve
from bridge.emulator.settings import DEV_API_KEY, EmulatorSettings

__all__ = ["DEV_API_KEY", "EmulatorSettings", "create_app", "serve"]
