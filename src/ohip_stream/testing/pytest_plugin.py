"""The pytest plugin of ohip-stream (registered through the ``pytest11`` entry point).

It imports the emulator's server stack only when a test uses one of its fixtures, so that
projects without the ``emulator`` extra are not affected.
"""
