"""yolo-supervisor: keeps Ultralytics YOLO training alive.

The daemon side of this package (everything except ``supervisor.child``) never
imports torch or ultralytics and never unpickles a checkpoint.
"""

__version__ = "0.1.0"
