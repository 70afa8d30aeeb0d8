"""The daemon: the event loop, job lifecycle, and its entry point."""
